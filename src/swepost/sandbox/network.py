"""The docker network that sandboxes with `limits.network` join: the internet, but nothing of the host's.

Docker's default bridge lets a container reach every service the host binds on 0.0.0.0 (via the gateway),
other containers, the host's LANs and cloud metadata (169.254.169.254). A fenced network is a dedicated
bridge without inter-container traffic, plus iptables rules keyed to its interface name:

    DOCKER-USER (forwarded)  drop loopback, link-local, RFC1918, CGNAT, multicast and the host's own subnets,
                             except the allow list and the host's DNS servers on port 53 (docker's embedded
                             DNS forwards from inside the container's namespace);
    INPUT (the host itself)  drop everything except the allow list.

Allow entries are `ADDR`, `CIDR`, `ADDR:PORT` or `CIDR:PORT` (a port covers TCP and UDP). A proxy named in
the host's HTTP(S)_PROXY is not allowed implicitly (sandboxes do not inherit the host's environment): name
it in `network_allow`. Each distinct allow list gets its own network (`swepost-net`, `swepost-net-<hash>`),
so one task's allowance is never another's. Rules are checked before inserted, under a file lock, on every
open. Without iptables (not root, a remote or rootless engine) network is refused, unless
SWEPOST_UNFENCED_NETWORK=1 says to use docker's default bridge unfenced. `swepost sandbox gc` leaves the
networks in place (they are cheap); `gc --all` removes idle ones with their rules, and so does ensure_network
when docker has no address pool left for a new one (docker's defaults hold about thirty bridges).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from swepost.sandbox.base import LABEL, SandboxError

NETWORK = "swepost-net"
UNFENCED_ENV = "SWEPOST_UNFENCED_NETWORK"
NETWORK_LABEL = "swepost.network"
# never reachable from a fenced network unless allowed: this host, its neighbours, clouds' metadata
BLOCKED = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
           "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4"]


def parse_allow(entry: str) -> tuple[str, int | None]:
    """'10.0.0.5:3128' -> ('10.0.0.5/32', 3128); ValueError saying what is wrong."""
    text = str(entry).strip()
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        net = ipaddress.IPv4Network(host, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IPv4 address or CIDR (optionally :PORT); "
                         "hostnames are not allowed (rules match addresses)") from None
    if sep and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{entry!r}: port must be 1-65535")
    return str(net), int(port) if sep else None


def network_name(allow: list[str]) -> str:
    canonical = sorted({"{}:{}".format(*parse_allow(a)) for a in allow})
    return NETWORK if not canonical else f"{NETWORK}-{_digest(','.join(canonical))}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def ensure_network(client, allow: list[str] | None = None) -> str:
    """The fenced network for this allow list, created and fenced if needed; returns its name (for
    network_mode). Without iptables: SandboxError, or docker's default bridge where UNFENCED_ENV=1."""
    allow = list(allow or [])
    if os.environ.get(UNFENCED_ENV) == "1":
        warnings.warn(f"{UNFENCED_ENV}=1: sandboxes with network reach the host's services and private networks",
                      stacklevel=2)
        return "bridge"
    name = network_name(allow)
    why = _cannot_fence(client)
    if why:
        raise SandboxError(f"refusing network for the sandbox: {why}; the fence that keeps it off the host's "
                           f"services needs it (set {UNFENCED_ENV}=1 to use docker's unfenced default bridge)")
    bridge = "swp-" + _digest(name)
    with _lock():
        try:
            _ensure_docker_network(client, name, bridge, allow)
        except Exception as e:  # noqa: BLE001 - docker.errors.APIError; the check below says which
            if not pools_exhausted(e):
                raise
            # docker's address pools hold ~30 bridges: free the idle ones other allow lists left, then retry
            removed = _remove_idle_networks(client, keep=name)
            if not removed:
                raise SandboxError(f"docker has no free address pool for network {name!r} and none of "
                                   "swepost's networks is idle; remove unused docker networks") from None
            _ensure_docker_network(client, name, bridge, allow)
        _ensure_rules(bridge, allow)
    return name


def pools_exhausted(error: Exception) -> bool:
    """Is this docker's 'no free address pool' refusal (every default /16 and /20 is taken by a network)?"""
    return "non-overlapping" in str(error) and "address pool" in str(error)


def _cannot_fence(client) -> str | None:
    if not client.api.base_url.startswith("http+docker://"):  # unix socket: the engine is on this machine
        return f"the docker engine at {client.api.base_url} is not local, so this host's iptables do not apply"
    if shutil.which("iptables") is None:
        return "iptables is not installed"
    r = _iptables("-S", "DOCKER-USER", check=False)
    if r.returncode != 0:
        return f"iptables cannot read the DOCKER-USER chain ({r.stderr.strip() or 'not root?'})"
    return None


class _lock:
    """One process at a time installs networks and rules on this host."""

    def __enter__(self):
        self.f = open(Path(tempfile.gettempdir()) / "swepost-network.lock", "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.f.close()


def _ensure_docker_network(client, name: str, bridge: str, allow: list[str]) -> None:
    import docker.errors

    try:
        net = client.networks.get(name)
    except docker.errors.NotFound:
        client.networks.create(name, driver="bridge", check_duplicate=True,
                               options={"com.docker.network.bridge.name": bridge,
                                        "com.docker.network.bridge.enable_icc": "false"},
                               labels={LABEL: "1", NETWORK_LABEL: "1", "swepost.allow": ",".join(allow)})
        return
    ours = (net.attrs.get("Labels") or {}).get(NETWORK_LABEL) == "1"
    if not ours or (net.attrs.get("Options") or {}).get("com.docker.network.bridge.name") != bridge:
        raise SandboxError(f"docker network {name!r} exists but is not swepost's fenced network; remove it")


def _rules(allow: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(forward chain, input chain) rule bodies. An allowed or answering packet RETURNs to docker's own
    rules; the forward chain drops local destinations, the input chain drops everything else."""
    accept = [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]]
    for entry in allow:
        net, port = parse_allow(entry)
        accept += ([["-d", net, "-p", proto, "--dport", str(port), "-j", "RETURN"] for proto in ("tcp", "udp")]
                   if port else [["-d", net, "-j", "RETURN"]])
    dns = [["-d", ns, "-p", proto, "--dport", "53", "-j", "RETURN"]
           for ns in _nameservers() for proto in ("udp", "tcp")]
    local = sorted(set(BLOCKED) | set(_host_networks()))
    forward = accept + dns + [["-d", net, "-j", "DROP"] for net in local]
    return forward, accept + [["-j", "DROP"]]


def _nameservers() -> list[str]:
    out = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    out.append(str(ipaddress.IPv4Address(parts[1])))
                except ValueError:
                    pass  # IPv6 resolvers: the fenced network has no IPv6
    except OSError:
        pass
    return out


def _host_networks() -> list[str]:
    """This host's own addresses and the subnets it sits on, beyond those BLOCKED already covers."""
    covered = [ipaddress.IPv4Network(b) for b in BLOCKED]
    found = []
    for args in (["-4", "-o", "addr", "show"], ["-4", "route", "show", "scope", "link"]):
        try:
            out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for word in out.split():
            try:
                net = ipaddress.IPv4Network(word, strict=False)
            except ValueError:
                continue
            if "/" in word and not any(net.subnet_of(c) for c in covered):
                found.append(str(net))
    return sorted(set(found))


def _ensure_rules(bridge: str, allow: list[str]) -> None:
    forward, inbound = _rules(allow)
    for chain, rules, parent in ((f"SWEPOST-{bridge[4:]}-F", forward, "DOCKER-USER"),
                                 (f"SWEPOST-{bridge[4:]}-I", inbound, "INPUT")):
        mark = "swepost " + _digest(repr(rules))
        listing = _iptables("-S", chain, check=False)
        if listing.returncode != 0:
            _iptables("-N", chain)
        if mark not in listing.stdout:  # new, or made for other addresses: refill; the mark comes last
            _iptables("-F", chain)
            for rule in rules:
                _iptables("-A", chain, *rule)
            _iptables("-A", chain, "-m", "comment", "--comment", mark, "-j", "RETURN")
        jump = [parent, "-i", bridge, "-j", chain]
        if _iptables("-C", *jump, check=False).returncode != 0:
            _iptables("-I", parent, "1", *jump[1:])


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise SandboxError(f"iptables {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def gc_networks(everything: bool = False, client=None) -> list[str]:
    """With everything: remove swepost's networks that no container uses, and their rules. Otherwise none
    (a network costs nothing and its rules guard only its own bridge; ensure_network frees idle ones itself
    when docker runs out of address pools)."""
    if not everything:
        return []
    from swepost.errors import WorkFailed
    from swepost.sandbox.images import docker_client

    try:
        client = client or docker_client(timeout=30)
    except WorkFailed:
        return []
    with _lock():
        return _remove_idle_networks(client)


def remove_network(client, name: str) -> bool:
    """Remove swepost's network `name` and its rules if no container uses it; False if it is in use or absent."""
    import docker.errors

    with _lock():
        try:
            net = client.networks.get(name)
        except docker.errors.NotFound:
            return False
        if (net.attrs.get("Labels") or {}).get(NETWORK_LABEL) != "1":
            return False
        return _remove(net)


def _remove_idle_networks(client, keep: str | None = None) -> list[str]:
    """Under the lock: remove every swepost network but `keep` that no container uses, with its rules."""
    return [net.name for net in client.networks.list(filters={"label": f"{NETWORK_LABEL}=1"})
            if net.name != keep and _remove(net)]


def _remove(net) -> bool:
    bridge = (net.attrs.get("Options") or {}).get("com.docker.network.bridge.name", "")
    try:
        net.remove()
    except Exception:  # noqa: BLE001 - still in use by a live sandbox (or gone already): keep its rules
        return False
    if bridge.startswith("swp-") and shutil.which("iptables"):
        for chain, parent in ((f"SWEPOST-{bridge[4:]}-F", "DOCKER-USER"), (f"SWEPOST-{bridge[4:]}-I", "INPUT")):
            while _iptables("-D", parent, "-i", bridge, "-j", chain, check=False).returncode == 0:
                pass
            _iptables("-F", chain, check=False)
            _iptables("-X", chain, check=False)
    return True
