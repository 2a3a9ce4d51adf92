"""The step deadline on real docker sandboxes: a straggler blocked in a long tool call is cut, its container
removed under the blocked call, and the batch returns without waiting for it."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("transformers")

from swepost.agent import AgentLimits  # noqa: E402
from swepost.envs.swe import SweEnvironment  # noqa: E402
from swepost.rewards.filters import is_ungraded  # noqa: E402
from swepost.sandbox.base import LABEL, owner  # noqa: E402
from swepost.stages.tasks import read_task_file  # noqa: E402
from swepost.train.rollout import ScriptedGenerator, run_rollouts  # noqa: E402

pytestmark = pytest.mark.docker
MARKER = "(straggler)"
DEADLINE = 15.0  # the others need ~7 s here (a sandbox, one command, grading in a fresh sandbox)


def call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def our_containers(client) -> list[str]:
    return [c.id for c in client.containers.list(all=True, filters={"label": [f"{LABEL}=1",
                                                                              f"swepost.owner={owner()}"]})]


def test_a_straggler_in_a_long_tool_call_is_cut_and_its_container_removed(repo_root, base_image, docker_client,
                                                                          tmp_path):
    import docker
    from transformers import AutoTokenizer

    from swepost.train.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    task = read_task_file(repo_root / "data" / "minicalc_tasks.jsonl")[0]
    slow = task.model_copy(update={"problem_statement": f"{task.problem_statement}\n{MARKER}"})
    generator = ScriptedGenerator(tok, [call("bash", {"command": "ls"}), call("submit", {})],
                                  variants={MARKER: [call("bash", {"command": "sleep 60"}), call("submit", {})]})
    envs: list[SweEnvironment] = []

    def make_env():
        envs.append(SweEnvironment(repos=repo_root / "data" / "repos", backend="docker", tool_timeout=120))
        return envs[-1]

    seen: dict[str, str] = {}
    stop = threading.Event()

    def spot_the_stragglers_container():  # read from the live environment, to look it up in docker afterwards
        while not stop.wait(0.1) and "id" not in seen:
            for env in list(envs):
                box, task_ = env.box, env.task
                if box is not None and task_ is not None and MARKER in task_.problem_statement and box.container:
                    seen["id"] = box.container.id

    spotter = threading.Thread(target=spot_the_stragglers_container, daemon=True)
    spotter.start()
    before = set(threading.enumerate())  # rollout threads other tests left behind are not this run's
    t0 = time.monotonic()
    rollouts, stats = run_rollouts([task, task, slow], make_env=make_env, generator=generator, tokenizer=tok,
                                   limits=AgentLimits(max_turns=4), max_prompt_tokens=8192,
                                   max_completion_tokens=4096, concurrency=3, max_wait=0.5, deadline=DEADLINE)
    wall = time.monotonic() - t0
    stop.set()
    assert DEADLINE <= wall < DEADLINE + 8  # not the 60 s of the sleep: returned at the deadline

    *fast, cut = rollouts
    for r in fast:  # the others ran to their end and were graded, as without a deadline
        t = r.trajectory
        assert t.exit_status == "submitted" and t.reward == 0.0 and t.resolved is not None, t.error
    t = cut.trajectory
    assert t.exit_status == "deadline" and t.reward is None and is_ungraded(t)
    assert "cut at the rollout deadline" in t.error and "running the tool call 'bash'" in t.error
    assert "sleep 60" in tok.decode([i for i, m in zip(cut.completion_ids, cut.mask, strict=True) if m])

    # its container is gone, removed under the blocked call, and no sandbox of this process is left
    assert "id" in seen
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(seen["id"])
    assert our_containers(docker_client) == []
    # the thread that was blocked in `sleep 60` woke up and ended (the cut did not just abandon it)
    def ours_alive():
        return [th for th in threading.enumerate() if th.name.startswith("rollout") and th.is_alive()
                and th not in before]

    # at once on a quiet machine; on a loaded one, give it until just before the 60 s sleep it was blocked in
    # (started after t0) would have ended by itself
    while ours_alive() and time.monotonic() - t0 < 58:
        time.sleep(0.1)
    assert not ours_alive()

    assert stats.cut == 1 and stats.lost_seconds == pytest.approx(DEADLINE, abs=1.0)
    others = sum(r.trajectory.seconds["total"] for r in fast)  # each rounded to 0.01 s in the trajectory
    slack = 0.01 * len(fast)
    assert others + stats.lost_seconds - slack <= stats.episode_seconds <= others + stats.lost_seconds + 1.0
    assert 0.2 < stats.lost_fraction < 0.8
    assert stats.idle_seconds == pytest.approx(stats.wall - stats.generation, abs=0.1)  # a batching generator
