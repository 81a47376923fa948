"""Several hosts on one table, and partitions between them and the database.

Three hosts made of network namespaces (tests/hosts.py), two `taskworker serve`
processes on each, run as a user runs them (`ip netns exec H python -m taskworker
serve`, DATABASE_URL at the switch's address), against a throwaway PostgreSQL on
the switch. A host is cut off by dropping its packets (nothing tells it: no reset,
no carrier loss) or by taking its link down, and healed. The test itself reads the
table over the server's unix socket, so its view is never cut.

The namespaces share the machine's hostname, so the holder `hostname:pid:random`
tells processes (and so hosts) apart by pid. Skips when network namespaces cannot
be made (not root, no iproute2, a kernel that refuses).
"""
from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
import pytest
from hosts import Host, HostsUnavailable, Network
from invariants import (
    FAST,
    LEASE_LOST_LINE,
    RESCUED_LINE,
    assert_all_done_once,
    backends_of,
    ids_in,
    insert_tasks,
    install_completion_audit,
    query,
    status_counts,
    stop_all,
    tail,
    wait_finished,
    wait_statements_ended,
    wait_until,
)
from pgserver import temp_database
from proc import ServeFactory, ServeProcess, run_cli

pytestmark = pytest.mark.slow  # (outages of seconds: on one interpreter only, see tox.ini)

PER_HOST = 2
LOST_LINE = r"Database connection lost \((\w+)\): (.*)"
RECONNECTED_LINE = r"Reconnected to database \((\w+)\)"
# A silently cut-off process must log a lost connection this soon (STATEMENT_TIMEOUT=2
# + the 5 s client deadline per statement, or tcp_user_timeout, with room to spare).
NOTICE_WITHIN = 15.0
# Tasks that take a while, on a few workers per host.
WORK = {**FAST, "TASK_MIN_SECONDS": "0.2", "TASK_MAX_SECONDS": "0.4", "WORKER_COUNT": "4"}
# ... with short leases and timeouts, so that an outage is noticed within seconds
# (STATEMENT_TIMEOUT=2: the client deadline is STATEMENT_TIMEOUT + 5 s).
OUTAGE_ENV = {**WORK, "LEASE_SECONDS": "3", "STATEMENT_TIMEOUT": "2", "CONNECT_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """Three hosts and a server, for the whole module (built once: about 2 s)."""
    net = Network(hosts=3)
    try:
        net.start()
    except HostsUnavailable as exc:
        pytest.skip(f"cannot make test hosts: {exc}")
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def hosts_template(network: Network) -> Iterator[str]:
    with temp_database(network.admin_url, prefix="tw_hosts_template_") as (name, url):
        code, out, err = run_cli(["migrate"], env={"DATABASE_URL": url})
        assert code == 0, f"taskworker migrate exited {code}\nstdout:\n{out}\nstderr:\n{err}"
        yield name


@pytest.fixture
def net(network: Network) -> Iterator[Network]:
    """The module's network, every host healed again after the test."""
    try:
        yield network
    finally:
        network.heal_all()


@pytest.fixture
def hdb(net: Network, hosts_template: str) -> Iterator[tuple[str, Any]]:
    """A fresh migrated database: (URL the hosts use, autocommit connection of the test)."""
    with temp_database(net.admin_url, template=hosts_template) as (name, local_url):
        conn = psycopg2.connect(local_url, connect_timeout=10)
        conn.autocommit = True
        try:
            yield net.url(name), conn
        finally:
            conn.close()


def start_fleet(net: Network, serve: ServeFactory, url: str,
                env: dict[str, str]) -> dict[str, list[ServeProcess]]:
    """PER_HOST serve processes inside each host, every one started; by host name."""
    fleet = {h.name: [serve(url, env=env, prefix=h.prefix) for _ in range(PER_HOST)]
             for h in net.hosts}
    for p in every(fleet):
        p.wait_for(rf"Starting worker {env['WORKER_COUNT']}$", timeout=60)
    return fleet


def every(fleet: dict[str, list[ServeProcess]]) -> list[ServeProcess]:
    return [p for procs in fleet.values() for p in procs]


def holder_pid(holder: str | None) -> int | None:
    """The pid in a holder `hostname:pid:random` (namespaces share the hostname)."""
    return int(holder.split(":")[1]) if holder else None


def completed_by(db: Any, ids: Sequence[int] | None = None) -> dict[int, int | None]:
    """task id -> pid of the process whose claim was completed (completions audit)."""
    rows = query(db, "SELECT task_id, holder FROM completions")
    return {i: holder_pid(h) for i, h in rows if ids is None or i in ids}


def held_by(db: Any, pids: Sequence[int]) -> list[int]:
    """Ids of the tasks in progress whose lease one of `pids` holds."""
    rows = query(db, "SELECT id, locked_by FROM tasks WHERE status = 'in_progress' ORDER BY id")
    return [i for i, h in rows if holder_pid(h) in pids]


def done_count(db: Any) -> int:
    return status_counts(db).get("done", 0)


def assert_running(procs: Sequence[ServeProcess], when: str) -> None:
    for p in procs:
        assert p.proc.poll() is None, (f"serve pid {p.pid} exited ({p.proc.returncode}) "
                                       f"{when}:\n{tail(p.output())}")


def stay_cut_off(procs: Sequence[ServeProcess], cut_at: float, seconds: float) -> None:
    """Let an outage that began at `cut_at` (monotonic) last `seconds`, every
    process running all along."""
    wait_until(lambda: time.monotonic() - cut_at >= seconds, seconds + 5,
               f"{seconds:g} s of outage", procs, interval=0.2, fail_on_exit=True)


def since(p: ServeProcess, offset: int) -> str:
    return p.output()[offset:]


def lost_and_back(p: ServeProcess, lost_from: int, back_from: int) -> tuple[set[str], set[str]]:
    """Names of the connections `p` logged lost since `lost_from`, and of those it
    logged reconnected since `back_from` (offsets in its log)."""
    lost = {name for name, _ in re.findall(LOST_LINE, since(p, lost_from))}
    return lost, set(re.findall(RECONNECTED_LINE, since(p, back_from)))


def wait_reconnected(procs: Sequence[ServeProcess], lost_from: dict[int, int],
                     back_from: dict[int, int], timeout: float = 30) -> None:
    """Wait until every connection each process lost has been reconnected."""
    def missing() -> dict[int, list[str]]:
        gaps = {}
        for p in procs:
            lost, back = lost_and_back(p, lost_from[p.pid], back_from[p.pid])
            if lost - back:
                gaps[p.pid] = sorted(lost - back)
        return gaps

    wait_until(lambda: not missing(), timeout,
               lambda: f"the lost connections to come back (still out: {missing()})", procs)


def work_on_after(db: Any, procs: Sequence[ServeProcess], what: str, count: int) -> list[int]:
    """Once everything held is finished, `count` new tasks run too, with every
    process still running; then all stop (Ctrl+C). Returns the new tasks' ids."""
    wait_finished(db, 60, procs)
    ids = insert_tasks(db, [f"task {n} after {what}" for n in range(count)])
    wait_finished(db, 60, procs)
    assert_running(procs, f"after {what}")
    stop_all(procs, signal.SIGINT)
    return ids


def wait_cut_processes_hold_tasks(db: Any, victims: Sequence[ServeProcess],
                                  procs: Sequence[ServeProcess], done_at_least: int) -> None:
    wait_until(lambda: done_count(db) >= done_at_least
               and all(held_by(db, [v.pid]) for v in victims), 30,
               "each process of the victim host to hold tasks mid-run", procs,
               interval=0.02, fail_on_exit=True)


def test_three_hosts_share_one_table(net: Network, hdb: tuple[str, Any],
                                     serve: ServeFactory) -> None:
    """3 hosts x 2 processes, 600 short tasks: each done exactly once, every host
    (and every process) did some, and Ctrl+C stops all six cleanly."""
    url, db = hdb
    install_completion_audit(db)
    env = {**FAST, "TASK_MIN_SECONDS": "0.01", "TASK_MAX_SECONDS": "0.03",
           "WORKER_COUNT": "5", "LEASE_SECONDS": "3"}
    fleet = start_fleet(net, serve, url, env)
    procs = every(fleet)
    ids = insert_tasks(db, [f"task {n} across hosts" for n in range(600)])
    wait_finished(db, 60, procs)
    stop_all(procs, signal.SIGINT)

    assert_all_done_once(db, ids)
    per_pid = Counter(completed_by(db).values())
    assert set(per_pid) <= {p.pid for p in procs}, f"completed by strangers: {per_pid}"
    per_host = {h: sum(per_pid[p.pid] for p in fleet[h]) for h in fleet}
    assert all(per_host.values()), f"a host did nothing: {per_host}"
    assert all(per_pid[p.pid] for p in procs), f"a process did nothing: {per_pid}"
    for p in procs:
        assert "All workers have completed, shutdown successful" in p.output()


def test_partition_mid_run_rescued_then_healed(net: Network, hdb: tuple[str, Any],
                                               serve: ServeFactory) -> None:
    """One host is cut off silently while its processes hold running tasks.

    Its tasks are rescued by the other hosts once the lease (3 s) runs out; its
    processes never exit; each notices its dead connection (`Database connection
    lost (...)`) within NOTICE_WITHIN s of the cut (STATEMENT_TIMEOUT=2: the client
    deadline is STATEMENT_TIMEOUT + 5 s); when the link heals they reconnect,
    discard their late results (`lease lost, result discarded`) and take new work.
    No task is lost, none is completed twice.
    """
    url, db = hdb
    install_completion_audit(db)
    fleet = start_fleet(net, serve, url, OUTAGE_ENV)
    procs = every(fleet)
    victim: Host = net.hosts[0]
    cut_off = fleet[victim.name]
    others = [p for p in procs if p not in cut_off]
    cut_pids = [p.pid for p in cut_off]
    first = insert_tasks(db, [f"task {n} before the partition" for n in range(300)])

    wait_cut_processes_hold_tasks(db, cut_off, procs, done_at_least=30)
    offsets = {p.pid: len(p.output()) for p in cut_off}
    backends = [b for p in cut_off for b in backends_of(db, p.pid)]
    net.cut(victim, silent=True)
    cut_at = time.monotonic()
    # What it holds in the table is frozen once the statements that reached the
    # server before the cut have ended: nothing it sends arrives any more.
    wait_statements_ended(db, backends, "the cut-off host")
    held = held_by(db, cut_pids)
    assert held, "the cut-off host held no task at the cut"

    # The others rescue what the cut-off host held, once its leases run out.
    wait_until(lambda: not held_by(db, cut_pids), 3 + 10,
               "the tasks of the cut-off host to be taken over", others)
    rescued_after = time.monotonic() - cut_at

    # Each cut-off process should notice its dead connection; heal when both
    # have, or NOTICE_WITHIN s after the cut, whichever comes first.
    noticed: dict[int, float] = {}
    while time.monotonic() - cut_at < NOTICE_WITHIN and len(noticed) < len(cut_off):
        for p in cut_off:
            if p.pid not in noticed and re.search(LOST_LINE, since(p, offsets[p.pid])):
                noticed[p.pid] = time.monotonic() - cut_at
        assert_running(procs, "while the host was cut off")
        time.sleep(0.05)
    heal_offsets = {p.pid: len(p.output()) for p in cut_off}
    net.heal(victim)
    healed_after = time.monotonic() - cut_at

    # Back on the network, the cut-off processes discard their late results...
    wait_until(lambda: any(re.search(LEASE_LOST_LINE, since(p, offsets[p.pid]))
                           for p in cut_off), 45,
               "a cut-off process to discard a late result", procs)
    wait_reconnected(cut_off, offsets, heal_offsets)
    # ... and go on working: they take a share of new tasks.
    second = work_on_after(db, procs, "the partition", 120)

    report = [f"cut at 0 s; held {len(held)} tasks; taken over by {rescued_after:.1f} s; "
              f"healed at {healed_after:.1f} s; noticed: "
              + ", ".join(f"pid {p.pid}: " + (f"{noticed[p.pid]:.1f} s" if p.pid in noticed
                                              else "not by the heal") for p in cut_off)]
    for p in cut_off:
        report.append(f"--- pid {p.pid} from the cut on:\n{tail(since(p, offsets[p.pid]), 60)}")
    print("\n".join(report))

    assert_all_done_once(db, first + second)
    by = completed_by(db)
    kept = {i: by[i] for i in held if by[i] in cut_pids}
    assert not kept, f"tasks held at the cut were completed by the cut-off host: {kept}"
    rescued = {i for p in others for i in ids_in(p.output(), RESCUED_LINE)}
    assert set(held) <= rescued, f"not rescued: {sorted(set(held) - rescued)}"
    discarded = {i for p in cut_off for i in ids_in(since(p, offsets[p.pid]), LEASE_LOST_LINE)}
    assert discarded <= set(held), f"discarded results of other tasks: {discarded - set(held)}"
    assert any(by[i] in cut_pids for i in second), "the healed host took none of the new tasks"

    assert len(noticed) == len(cut_off), (
        f"a cut-off process did not log 'Database connection lost' within {NOTICE_WITHIN:g} s "
        f"of a silent cut:\n" + "\n".join(report))
    # Which mechanism fires first: the client's own deadline, STATEMENT_TIMEOUT (2 s)
    # + 5 s (tcp_user_timeout is set to the same bound; keepalives take 25 s).
    for p in cut_off:
        first = re.search(LOST_LINE, since(p, offsets[p.pid]))
        assert first and first.group(2) == "no answer within 7s; reconnecting", first
    for p in cut_off:
        lost, back = lost_and_back(p, offsets[p.pid], heal_offsets[p.pid])
        assert lost, f"pid {p.pid} lost no connection:\n{tail(p.output())}"
        assert lost <= back, f"pid {p.pid} lost {sorted(lost)}, reconnected {sorted(back)}"


def test_partition_that_heals_before_the_lease_ends(net: Network, hdb: tuple[str, Any],
                                                    serve: ServeFactory) -> None:
    """A host's link goes down for 3 s, well within its 15 s lease: it keeps its
    tasks. No `Rescued` line anywhere, no task charged a rescue, every task done
    once, and the tasks it held at the cut are completed by its own processes.

    The lease is 15 s rather than 10: after a cut of c seconds, TCP's retransmission
    backoff can hold a stalled statement for about 2c more, and a renewal must land
    before the lease ends (2/3 of it after the last one).
    """
    url, db = hdb
    install_completion_audit(db)
    env = {**WORK, "LEASE_SECONDS": "15"}
    fleet = start_fleet(net, serve, url, env)
    procs = every(fleet)
    victim = net.hosts[1]
    cut_off = fleet[victim.name]
    cut_pids = [p.pid for p in cut_off]
    ids = insert_tasks(db, [f"task {n} of a short partition" for n in range(300)])

    wait_cut_processes_hold_tasks(db, cut_off, procs, done_at_least=30)
    backends = [b for p in cut_off for b in backends_of(db, p.pid)]
    net.cut(victim)
    cut_at = time.monotonic()
    wait_statements_ended(db, backends, "the cut-off host")
    held = held_by(db, cut_pids)  # frozen while the host is cut off
    assert held, "the cut-off host held no task at the cut"
    stay_cut_off(procs, cut_at, 3)
    net.heal(victim)

    wait_finished(db, 60, procs)
    assert_running(procs, "after the partition")
    stop_all(procs, signal.SIGINT)

    assert_all_done_once(db, ids)
    for p in procs:
        assert not re.search(RESCUED_LINE, p.output()), f"pid {p.pid} rescued:\n{p.output()}"
    charged = query(db, "SELECT id, rescues FROM tasks WHERE rescues <> 0")
    assert not charged, f"tasks charged a rescue: {charged[:20]}"
    by = completed_by(db, held)
    taken = {i: pid for i, pid in by.items() if pid not in cut_pids}
    assert not taken, f"tasks the host held at the cut were completed by others: {taken}"


def test_database_unreachable_from_every_host(net: Network, hdb: tuple[str, Any],
                                              serve: ServeFactory) -> None:
    """Every host is cut off silently for 10 s, then healed: every process keeps
    running, reconnects (each connection it lost comes back), works again (each
    takes a share of new tasks), and every task is done exactly once.

    The issue asks for 60 s; 10 s keeps the suite fast and is still more than three
    leases (3 s), so every lease runs out during the outage, and more than the
    client deadline per statement (STATEMENT_TIMEOUT=2 + 5 s), so connections are
    found dead and reconnect attempts fail (CONNECT_TIMEOUT=2) before the network
    is back. (Without that deadline nothing is found dead in 10 s: the stalled
    statements resume at TCP's next retransmission after the heal, and the test
    then only shows that the processes survive and go on.) Not covered: the
    `still down after Ns` line, logged once a minute.
    """
    url, db = hdb
    install_completion_audit(db)
    fleet = start_fleet(net, serve, url, OUTAGE_ENV)
    procs = every(fleet)
    first = insert_tasks(db, [f"task {n} before the outage" for n in range(300)])

    wait_until(lambda: done_count(db) >= 30, 30, "30 tasks done", procs)
    offsets = {p.pid: len(p.output()) for p in procs}
    for host in net.hosts:
        net.cut(host, silent=True)
    stay_cut_off(procs, time.monotonic(), 10)
    heal_offsets = {p.pid: len(p.output()) for p in procs}
    for host in net.hosts:
        net.heal(host)

    wait_reconnected(procs, offsets, heal_offsets)
    second = work_on_after(db, procs, "the outage", 240)

    assert_all_done_once(db, first + second)
    by = Counter(completed_by(db, second).values())
    idle = [p.pid for p in procs if not by[p.pid]]
    assert not idle, f"processes that took none of the new tasks: {idle} ({by})"
