"""Sandbox latency and throughput, as JSON.

- round trip of a trivial command (p50 / p99) per backend, beside `docker exec` through the docker CLI
  measured in the same run (goal: docker session p50 <= 5 ms and >= 10x faster than `docker exec`);
- time until a sandbox is ready: cold start vs a warm pool (goals: cold <= 1 s, warm <= 0.1 s);
- throughput (commands/s) of 1, 4 and 16 concurrent docker sandboxes running a short command loop.
Backends that are not available here are reported as skipped, not silently left out.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from report import emit, pct


def summary(samples: list[float]) -> dict:
    return {"p50_ms": round(pct(samples, 0.5) * 1000, 3), "p99_ms": round(pct(samples, 0.99) * 1000, 3),
            "mean_ms": round(statistics.fmean(samples) * 1000, 3), "n": len(samples)}


def round_trips(box, n: int) -> list[float]:
    box.run("true")
    out = []
    for _ in range(n):
        t = time.perf_counter()
        box.run("true")
        out.append(time.perf_counter() - t)
    return out


def available(backend: str) -> str | None:
    if backend == "docker":
        from swepost.sandbox.docker import docker_available

        return None if docker_available() else "no docker engine"
    if backend == "bwrap":
        from swepost.sandbox.bwrap import bwrap_available

        return None if bwrap_available() else "bwrap missing or not permitted"
    return None


def bench_round_trip(backends: list[str], n: int, image: str) -> dict:
    from swepost.sandbox import sandbox_class

    out: dict = {}
    for backend in backends:
        why = available(backend)
        if why:
            out[backend] = {"skipped": why}
            continue
        kwargs = {"image": image} if backend == "docker" else {}
        with sandbox_class(backend)(**kwargs) as box:
            out[backend] = summary(round_trips(box, n))
            if backend == "docker" and shutil.which("docker"):
                name = box.container.name
                samples = []
                for _ in range(max(10, n // 20)):
                    t = time.perf_counter()
                    subprocess.run(["docker", "exec", name, "true"], check=True, capture_output=True)
                    samples.append(time.perf_counter() - t)
                out["docker_exec_cli"] = summary(samples)
    if "p50_ms" in out.get("docker", {}) and "p50_ms" in out.get("docker_exec_cli", {}):
        out["docker_speedup_vs_exec"] = round(out["docker_exec_cli"]["p50_ms"] / out["docker"]["p50_ms"], 1)
    return out


def bench_startup(image: str, n: int) -> dict:
    from swepost.sandbox.docker import DockerSandbox, WarmPool

    cold = []
    for _ in range(n):
        t = time.perf_counter()
        box = DockerSandbox(image).start()
        cold.append(time.perf_counter() - t)
        box.close()
    warm = []
    with WarmPool(image, size=2) as pool:
        for _ in range(n):
            while pool.ready.qsize() < 2:  # a pool given time to fill, as between episodes
                time.sleep(0.05)
            t = time.perf_counter()
            box = pool.acquire()
            warm.append(time.perf_counter() - t)
            box.close()
    return {"cold_start": summary(cold), "warm_pool": summary(warm)}


def command_loop(image: str, k: int, seconds: float) -> float:
    """Commands per second of k sandboxes each running a short command in a loop for `seconds`."""
    from concurrent.futures import ThreadPoolExecutor

    from swepost.sandbox.docker import DockerSandbox

    with ThreadPoolExecutor(k) as pool:
        boxes = list(pool.map(lambda _: DockerSandbox(image).start(), range(k)))
    stop = time.perf_counter() + seconds

    def loop(box) -> int:
        n = 0
        while time.perf_counter() < stop:
            box.run("echo x > /tmp/f && cat /tmp/f")
            n += 1
        return n

    try:
        with ThreadPoolExecutor(k) as pool:
            total = sum(pool.map(loop, boxes))
    finally:
        for box in boxes:
            box.close()
    return total / seconds


def bench_throughput(image: str, concurrency: list[int], seconds: float) -> dict:
    return {str(k): {"commands_per_s": round(command_loop(image, k, seconds), 1), "sandboxes": k}
            for k in concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="round trips per backend")
    parser.add_argument("--starts", type=int, default=8, help="cold and warm starts measured")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--image", default=None)
    parser.add_argument("--backends", default="docker,bwrap,local", help="round-trip backends, comma-separated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from swepost.sandbox.images import DEFAULT_BASE_IMAGE

    image = args.image or DEFAULT_BASE_IMAGE
    result: dict = {"benchmark": "sandbox", "python": platform.python_version(), "cpus": os.cpu_count(),
                    "image": image}
    result["round_trip"] = bench_round_trip(args.backends.split(","), args.runs, image)
    if available("docker") is None:
        result["startup"] = bench_startup(image, args.starts)
        result["throughput"] = bench_throughput(image, [1, 4, 16], args.seconds)
    rt, st = result["round_trip"], result.get("startup", {})
    result["goals"] = {
        "docker_p50_le_5ms": rt.get("docker", {}).get("p50_ms", 1e9) <= 5,
        "docker_10x_faster_than_exec": rt.get("docker_speedup_vs_exec", 0) >= 10,
        "cold_start_le_1s": st.get("cold_start", {}).get("p50_ms", 1e9) <= 1000,
        "warm_pool_le_100ms": st.get("warm_pool", {}).get("p50_ms", 1e9) <= 100,
    }
    emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
