"""The fence around sandboxes with network (sandbox/network.py), against the real docker engine and iptables.

Each test names the defence it proves; removing that defence makes it fail.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading

import pytest
from conftest import require_or_skip

from swepost.sandbox.base import Limits, SandboxError
from swepost.sandbox.docker import DockerSandbox
from swepost.sandbox.network import (
    NETWORK_LABEL,
    ensure_network,
    network_name,
    parse_allow,
    pools_exhausted,
    remove_network,
)

CONNECT = ("python3 -c \"import socket; s=socket.socket(); s.settimeout(1.5)\n"
           "try:\n s.connect(('{host}', {port})); print('CONNECTED')\nexcept OSError as e: print('REFUSED', e)\"")
# the sandbox's default gateway (the host, seen from the container), read from the kernel's table
GATEWAY = ("python3 -c \"import socket,struct\nfor l in open('/proc/net/route').readlines()[1:]:\n"
           " f=l.split()\n if f[1]=='00000000': print('GW', socket.inet_ntoa(struct.pack('<I', int(f[2], 16))))\"")


@pytest.fixture
def listener():
    """A TCP server bound on every host address, as a host's database or dev server would be."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def host_address() -> str:
    """The host's own address on its outbound interface (not a docker bridge)."""
    out = subprocess.run(["ip", "-4", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout.split()
    return out[out.index("src") + 1]


def connects(box, host: str, port: int) -> bool:
    out = box.run(CONNECT.format(host=host, port=port), timeout=20).output
    assert "CONNECTED" in out or "REFUSED" in out, out
    return "CONNECTED" in out


def test_host_services_and_metadata_are_fenced_off(base_image, listener):
    """Defence: the swepost-net fence (INPUT and DOCKER-USER rules). On docker's default bridge, which the
    sandbox used before, the host's 0.0.0.0 service answers through the gateway."""
    with DockerSandbox(base_image, limits=Limits(network=True)) as box:
        gateway = box.run(GATEWAY).output.split("GW ")[-1].strip()
        assert gateway.count(".") == 3, gateway
        assert not connects(box, gateway, listener)
        assert not connects(box, host_address(), listener)
        assert not connects(box, "169.254.169.254", 80)  # cloud metadata
        assert not connects(box, "172.17.0.1", listener)  # docker0: other containers' gateway


def test_an_allowed_address_and_port_is_reachable(base_image, listener, docker_client):
    """Defence: the allow list opens exactly ADDR:PORT (a proxy the user names), not the rest of that host."""
    here = host_address()
    allow = [f"{here}:{listener}"]
    try:
        with DockerSandbox(base_image, limits=Limits(network=True, network_allow=allow)) as box:
            assert connects(box, here, listener)
            with socket.socket() as other:  # a second host service, not in the allow list
                other.bind(("0.0.0.0", 0))
                other.listen(1)
                assert not connects(box, here, other.getsockname()[1])
    finally:  # a network per random port: left behind, every run would take one of docker's ~30 address pools
        removed = remove_network(docker_client, network_name(allow))
    assert removed
    chains = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert "swp-" + hashlib.sha256(network_name(allow).encode()).hexdigest()[:8] not in chains  # rules gone too


def test_idle_networks_are_freed_when_docker_runs_out_of_address_pools(base_image, docker_client):
    """Defence: ensure_network frees swepost's idle networks when docker has no address pool left (the CI
    failure: one network per allow list, never removed, until a new sandbox could not start)."""
    fillers = []
    try:
        for i in range(64):  # docker's default pools hold about thirty bridges
            try:
                fillers.append(docker_client.networks.create(
                    f"swepost-filler-{os.getpid()}-{i}", driver="bridge",
                    labels={"swepost.sandbox": "1", NETWORK_LABEL: "1"}))
            except Exception as e:  # noqa: BLE001 - docker.errors.APIError
                assert pools_exhausted(e), e
                break
        else:
            pytest.fail("docker never ran out of address pools; this test cannot show the defence")
        with DockerSandbox(base_image, limits=Limits(network=True, network_allow=["192.0.2.77:9"])) as box:
            assert box.run("echo up").output.strip() == "up"
        left = {n.name for n in docker_client.networks.list(filters={"label": f"{NETWORK_LABEL}=1"})}
        assert not left & {f.name for f in fillers}
        assert network_name(["192.0.2.77:9"]) in left
    finally:
        for net in fillers:
            try:
                net.remove()
            except Exception:  # noqa: BLE001 - freed by the defence already
                pass
        remove_network(docker_client, network_name(["192.0.2.77:9"]))


def test_without_network_only_loopback(base_image):
    """Defence: network=False is docker's `none` network: the sandbox has no interface but lo."""
    with DockerSandbox(base_image, limits=Limits()) as box:
        assert box.run("ls /sys/class/net").output.split() == ["lo"]


def test_pypi_still_works_through_the_fence(base_image, docker_client):
    """The fence keeps what a task needs: DNS (the host's resolver, a private address here) and the package
    index. Skips only if containers on docker's default bridge cannot reach PyPI on this machine either."""
    probe = "python3 -m pip download six --no-deps --no-cache-dir -d /tmp/x -q && ls /tmp/x"
    try:
        plain = docker_client.containers.run(base_image, ["sh", "-c", probe], remove=True, network_mode="bridge")
    except Exception as e:  # noqa: BLE001 - ContainerError: pip failed
        require_or_skip(f"PyPI is not reachable from docker containers on this machine: {e}")
    assert b"six" in plain
    with DockerSandbox(base_image, limits=Limits(network=True)) as box:
        r = box.run(probe, timeout=120)
        assert r.exit_code == 0 and "six-" in r.output, r.output[-2000:]


def test_network_is_refused_when_the_fence_cannot_be_built(docker_client, tmp_path, monkeypatch):
    """Defence: fail closed. Without iptables the sandbox gets no network, not docker's unfenced bridge."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no iptables to be found
    monkeypatch.delenv("SWEPOST_UNFENCED_NETWORK", raising=False)
    with pytest.raises(SandboxError, match="iptables"):
        ensure_network(docker_client)


def test_allow_entries_are_addresses():
    assert parse_allow("10.1.2.3:3128") == ("10.1.2.3/32", 3128)
    assert parse_allow("10.0.0.0/8") == ("10.0.0.0/8", None)
    for bad in ["proxy.internal:3128", "10.1.2.3:0", "10.1.2.3:http"]:
        with pytest.raises(ValueError):
            parse_allow(bad)
    assert os.environ.get("SWEPOST_UNFENCED_NETWORK") != "1", "these tests prove the fence: run them without it"
