"""Several test hosts on one machine: network namespaces on a private switch,
with a throwaway PostgreSQL on the switch.

    with Network(hosts=3) as net:
        url = net.url("mydb")           # postgresql://postgres@10.213.0.1:5432/mydb
        net.run(net.hosts[0], "ip", "addr")
        serve(url, prefix=net.hosts[0].prefix)   # ip netns exec twh<pid>h0 python -m ...
        net.cut(net.hosts[0], silent=True)      # its packets vanish, no reset is sent
        net.heal(net.hosts[0])

The layout. A network namespace `twh<pid>net` plays the network: it holds a bridge
`sw` with address 10.213.0.1/24, and the PostgreSQL cluster (tests/pgserver.py)
listens on that address inside it. Each host is a namespace `twh<pid>h<i>` with
loopback up and one veth, `eth0` (10.213.0.<10+i>/24), whose other end `h<i>` is a
port of the bridge. Nothing is created in the root namespace, so the subnet cannot
clash with a real network or with another run, and no packet of these tests can
go anywhere but to addresses made here. The pytest process, in the root
namespace, reaches the server over its unix socket (`admin_url`).

Neighbour (ARP) entries are permanent on both sides, so that a cut host is only
ever told about the cut by TCP's own timers, as across a router, never by a
failed address resolution.

Two kinds of cut, each applied in the network namespace (the host's side of the
link is left alone):

- `cut(host)`: the host's cable is pulled: `ip link set h<i> down`. The host sees
  its link go down (NO-CARRIER); its packets go nowhere.
- `cut(host, silent=True)`: the switch drops every frame to and from the host,
  its link stays up, and no one sends a reset. Frames to the host are dropped by
  a qdisc on the port: `netem loss 100%` where the kernel has netem, else `pfifo
  limit 0` (detected at start; `drop_qdisc`). A qdisc sees only what a device
  sends, so frames from the host are dropped by setting the bridge port's state
  to disabled, which drops both ways (`blocking` is accepted but ignored while
  STP is off, so the state is read back). A qdisc on the host's own eth0 would
  not do: TCP takes a drop reported by pfifo for local congestion and does not
  count the lost keepalive probes. Checked with keepalives 10 s + 3 x 5 s: an idle
  connection fails after about 25 s with the port disabled, and not within 60 s
  with pfifo on the host's eth0 (tcp_user_timeout fires either way).

`heal(host)` undoes either. Everything made is named twh<pid>...: `close()` (the
end of the `with`) kills what still runs in these namespaces (only processes the
tests started there), stops the cluster and deletes the namespaces, which takes
their links and qdiscs with them; `clean_leftovers()` (run at start) does the same
for the namespaces and cluster folders of an earlier run whose process is gone
(killed before it could clean up).

Needs root, iproute2 (`ip`, `bridge`; `tc` for the qdisc) and a kernel that lets
`ip netns add` work: otherwise `Network` raises HostsUnavailable with the reason.
No pytest dependency.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from pgserver import SERVER_USER, Cluster, _bin, cluster, database_url
from waiting import wait_until

PREFIX = "twh"  # every namespace of a run is PREFIX<pid>...; leftovers are found by it
SUBNET = "10.213.0"  # a /24 that exists only inside the namespaces made here
SERVER_ADDRESS = f"{SUBNET}.1"
SERVER_PORT = 5432  # nothing else listens inside the network namespace
BRIDGE = "sw"
BRIDGE_MAC = "02:00:0a:d5:00:01"  # fixed (locally administered), so that ports do not change it
OWN_NAME = re.compile(rf"^{PREFIX}(\d+)(net|h\d+)$")
# Qdiscs that drop everything a device sends, best first (netem is often not built).
DROP_QDISCS = (("netem", "loss", "100%"), ("pfifo", "limit", "0"))
SBIN = ("/usr/sbin", "/sbin")


def _tool(name: str) -> str | None:
    """Path of an iproute2 tool: on PATH, else in the sbin folders a user's PATH may lack."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


IP = _tool("ip") or "ip"
BRIDGE_TOOL = _tool("bridge") or "bridge"
TC = _tool("tc") or ""  # "": no tc, silent cuts rely on the bridge port alone


class HostsUnavailable(Exception):
    """Network namespaces cannot be made here; str() says why."""


@dataclass
class Host:
    name: str  # h0, h1, ...
    netns: str  # twh<pid>h<i>
    address: str  # its eth0 address
    port: str  # the other end of its veth: a bridge port in the network namespace
    cut: str | None = field(default=None)  # None, "down" or "silent"

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a command inside this host."""
        return [IP, "netns", "exec", self.netns]


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def _in(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv inside network namespace `netns`."""
    return _run([IP, "netns", "exec", netns, *argv], check=check)


def _alive(pid: int) -> bool:
    """Is `pid` a live process (not gone, not a zombie waiting to be reaped)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] != "Z"
    return True


def _namespaces() -> list[str]:
    done = _run([IP, "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _kill_inside(netns: str) -> None:
    """SIGKILL every process living in one of our namespaces, and wait for them."""
    pids = [int(p) for p in _run([IP, "netns", "pids", netns], check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(AssertionError):  # (cleaning up: go on regardless)
        wait_until(lambda: not any(_alive(p) for p in pids), 5,
                   f"the processes in {netns} to exit")


def _stop_cluster_folder(root: str) -> None:
    """Stop the server of a leftover cluster folder (if any) and remove the folder."""
    data = os.path.join(root, "data")
    if os.path.exists(os.path.join(data, "postmaster.pid")):
        argv = [_bin("pg_ctl"), "stop", "-m", "immediate", "-D", data]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        _run(argv, check=False)
    shutil.rmtree(root, ignore_errors=True)


def clean_leftovers() -> list[str]:
    """Remove what runs that are no longer alive left behind: their namespaces (with
    the processes still inside, their links and qdiscs) and their cluster folders.
    Return what was removed."""
    removed = []
    for root in glob.glob(os.path.join(tempfile.gettempdir(), f"tw-pg-{PREFIX}*-*")):
        m = re.search(rf"tw-pg-{PREFIX}(\d+)-", os.path.basename(root))
        if m and not _alive(int(m.group(1))):
            _stop_cluster_folder(root)
            removed.append(root)
    for netns in _namespaces():
        m = OWN_NAME.match(netns)
        if m and not _alive(int(m.group(1))):
            _kill_inside(netns)
            _run([IP, "netns", "del", netns], check=False)
            removed.append(netns)
    return removed


class Network:
    """N hosts and a PostgreSQL server on one private switch (see the module doc)."""

    def __init__(self, hosts: int = 3, max_connections: int = 200) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.netns = f"{self.tag}net"
        self.hosts = [Host(f"h{i}", f"{self.tag}h{i}", f"{SUBNET}.{10 + i}", f"h{i}")
                      for i in range(hosts)]
        self.max_connections = max_connections
        self.made: list[str] = []  # namespaces created so far, for close()
        self.cluster: Cluster | None = None
        self.drop_qdisc: tuple[str, ...] | None = None  # how a silent cut drops frames
        self.silent_cut_unavailable: str | None = None  # why silent cuts cannot be made
        self._stack = contextlib.ExitStack()

    # -- setting up and tearing down

    def __enter__(self) -> Network:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise HostsUnavailable("network namespaces need root")
        for tool in ("ip", "bridge"):
            if not _tool(tool):
                raise HostsUnavailable(f"`{tool}` not found: install iproute2")
        clean_leftovers()
        try:
            self._add_netns(self.netns)
        except RuntimeError as exc:
            raise HostsUnavailable(f"cannot make a network namespace: {exc}") from None
        try:
            self._build()
            self.cluster = self._stack.enter_context(cluster(
                max_connections=self.max_connections, host=SERVER_ADDRESS, port=SERVER_PORT,
                trust=[f"{SUBNET}.0/24"], prefix=[IP, "netns", "exec", self.netns],
                tmp_prefix=f"tw-pg-{self.tag}-"))
        except BaseException:
            self.close()
            raise

    def _add_netns(self, name: str) -> None:
        _run([IP, "netns", "add", name])
        self.made.append(name)
        _in(name, IP, "link", "set", "lo", "up")

    def _build(self) -> None:
        net = self.netns
        _in(net, IP, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
            "stp_state", "0")
        _in(net, IP, "addr", "add", f"{SERVER_ADDRESS}/24", "dev", BRIDGE)
        _in(net, IP, "link", "set", BRIDGE, "up")
        for host in self.hosts:
            self._add_netns(host.netns)
            _in(net, IP, "link", "add", host.port, "type", "veth",
                "peer", "name", "eth0", "netns", host.netns)
            _in(net, IP, "link", "set", host.port, "master", BRIDGE, "up")
            _in(host.netns, IP, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _in(host.netns, IP, "link", "set", "eth0", "up")
            # Permanent neighbours both ways: no ARP, so a cut shows only as silence.
            _in(host.netns, IP, "neigh", "replace", SERVER_ADDRESS, "lladdr", BRIDGE_MAC,
                "dev", "eth0", "nud", "permanent")
            _in(net, IP, "neigh", "replace", host.address, "lladdr",
                self._mac(host.netns, "eth0"), "dev", BRIDGE, "nud", "permanent")
        if self.hosts:
            self._detect_silent_cut(self.hosts[0])

    def _mac(self, netns: str, dev: str) -> str:
        return json.loads(_in(netns, IP, "-j", "link", "show", dev).stdout)[0]["address"]

    def _detect_silent_cut(self, host: Host) -> None:
        """Find the qdisc that drops everything, and check the port can be blocked."""
        if TC:
            for qdisc in DROP_QDISCS:
                if _in(self.netns, TC, "qdisc", "add", "dev", host.port, "root", *qdisc,
                       check=False).returncode == 0:
                    _in(self.netns, TC, "qdisc", "del", "dev", host.port, "root")
                    self.drop_qdisc = qdisc
                    break
        try:
            self._port_state(host, "disabled")
        except RuntimeError as exc:
            self.silent_cut_unavailable = f"cannot disable a bridge port: {exc}"
            return
        self._port_state(host, "forwarding")

    def _port_state(self, host: Host, state: str) -> None:
        """Set the state of `host`'s bridge port, and check that it took."""
        _in(self.netns, BRIDGE_TOOL, "link", "set", "dev", host.port, "state", state)
        shown = json.loads(_in(self.netns, BRIDGE_TOOL, "-j", "link", "show", "dev", host.port
                               ).stdout)
        if not shown or shown[0].get("state") != state:
            raise RuntimeError(f"bridge port {host.port} is {shown and shown[0].get('state')}, "
                               f"not {state}")

    def close(self) -> None:
        """Kill what still runs in the namespaces, stop the cluster, delete the namespaces."""
        for netns in reversed(self.made):  # hosts first: their serve processes
            if netns != self.netns:
                _kill_inside(netns)
        try:
            self._stack.close()  # stops the cluster (pg_ctl stop) and removes its folder
        finally:
            for netns in reversed(self.made):
                _kill_inside(netns)
                _run([IP, "netns", "del", netns], check=False)
            self.made.clear()

    # -- using it

    def url(self, dbname: str = "postgres") -> str:
        """URL of `dbname` as the hosts reach it: over TCP, at the switch's address."""
        assert self.cluster is not None
        return database_url(self.cluster.url, dbname)

    @property
    def admin_url(self) -> str:
        """Superuser URL for the test itself (root namespace): the unix socket."""
        assert self.cluster is not None
        return self.cluster.local_url

    def run(self, host: Host, *argv: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command inside `host` (ip netns exec); return its completed process."""
        return subprocess.run([*host.prefix, *argv], capture_output=True, text=True,
                              check=check, timeout=timeout, stdin=subprocess.DEVNULL)

    def cut(self, host: Host, silent: bool = False) -> None:
        """Cut `host` off the network: its link goes down, or (silent) every frame to
        and from it is dropped while its link stays up."""
        if host.cut:
            raise RuntimeError(f"{host.name} is already cut ({host.cut})")
        if not silent:
            _in(self.netns, IP, "link", "set", host.port, "down")
            host.cut = "down"
            return
        if self.silent_cut_unavailable:
            raise HostsUnavailable(self.silent_cut_unavailable)
        host.cut = "silent"
        if self.drop_qdisc:
            _in(self.netns, TC, "qdisc", "add", "dev", host.port, "root", *self.drop_qdisc)
        self._port_state(host, "disabled")

    def heal(self, host: Host) -> None:
        """Undo `cut`: frames flow to and from `host` again."""
        if host.cut == "down":
            _in(self.netns, IP, "link", "set", host.port, "up")
        elif host.cut == "silent":
            self._port_state(host, "forwarding")
            if self.drop_qdisc:
                _in(self.netns, TC, "qdisc", "del", "dev", host.port, "root")
        host.cut = None

    def heal_all(self) -> None:
        for host in self.hosts:
            self.heal(host)

    def qdiscs(self, host: Host) -> str:
        """The qdiscs on the network's side of `host`'s link (for assertions)."""
        if not TC:
            return ""
        return _in(self.netns, TC, "qdisc", "show", "dev", host.port).stdout
