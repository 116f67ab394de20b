"""Clusters to break: nodes optionally behind fault proxies, the faults, and convergence.

`start_faulty_cluster` starts real shardd and router processes like harness.start_cluster,
but can put a FaultProxy in front of chosen nodes (the routers' cluster.toml names the
proxy's address). The fault methods block for the length of the fault and record what
they did, so a report can say which faults a run injected, and what showed that each took
effect: while a fault on a node lasts, the first router's Admin GetHealth is polled for that
node (`seen`: was it DOWN, and why), and while a link is slowed, reads at ALL (which need
the slowed node's answer) are timed through the router (`slow_reads`). `converge` heals the
replicas the way an operator would (a read of every key at ALL, so read repair runs) and
measures how long it took until every node holds the same data.

The routers' `[timeouts]` are the harness's test-tuned ones (health checks every 200 ms)
unless `start_faulty_cluster` is given others (faults/timeouts.py names what a user gets).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from harness import (
    Cluster,
    Proc,
    free_port,
    router_proc,
    shardd_proc,
    wait_serving,
    write_cluster_toml,
)
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

from faults.history import OK, Op
from faults.observe import HealthWatch, Sample, seen_down, timed_reads_at_all
from faults.proxy import FaultProxy
from faults.slow_disk import stalled_writes
from faults.timeouts import set_timeouts
from faults.verdict import Final

# Bytes of values one read asks for at most (under gRPC's 4 MiB default message limit).
READ_BYTES = 3 << 20
READ_CHUNK = 500


@dataclass
class FaultyCluster(Cluster):
    """A Cluster whose nodes may sit behind proxies; stop() also stops the proxies."""

    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    # (fault, start, end) in time.monotonic(), to judge what the cluster did meanwhile.
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    # Per fault on a node: what the first router's GetHealth said of it while it lasted.
    seen: dict[str, list[Sample]] = field(default_factory=dict)
    # Per slowed link: seconds each read at ALL took through the router while it lasted
    # (reads that failed are left out), and the same just before the link was slowed.
    slow_reads: dict[str, list[float]] = field(default_factory=dict)
    reads_before: dict[str, list[float]] = field(default_factory=dict)

    def stop(self) -> None:
        super().stop()
        for proxy in self.proxies.values():
            proxy.stop()

    def acknowledged_during_faults(self, ops: Sequence[Op]) -> dict[str, int]:
        """Per fault, the writes that began and were acknowledged while it lasted."""
        return {
            fault: sum(
                op.is_write and op.outcome == OK and start <= op.start and op.end <= end
                for op in ops
            )
            for fault, start, end in self.windows
        }

    def addresses(self) -> list[str]:
        return [router.address for router in self.routers]

    def seen_down(self, fault: str) -> list[Sample]:
        """The samples that showed the fault's node DOWN while the fault lasted, after one
        had shown it UP (observe.seen_down)."""
        return seen_down(self.seen.get(fault, []))

    @contextmanager
    def _fault(self, fault: str, node_id: str | None = None) -> Iterator[None]:
        """Records fault and the time it lasted; with node_id, what the first router
        believed about that node meanwhile."""
        self.faults.append(fault)
        # Its first sample is taken before the fault begins.
        watch = HealthWatch(self.router.address, node_id).start() if node_id else None
        start = time.monotonic()
        try:
            yield
        finally:
            self.windows.append((fault, start, time.monotonic()))
            if watch is not None:
                self.seen[fault] = watch.stop()

    def kill_restart(self, node_id: str, down_s: float) -> None:
        """SIGKILL a node, leave it down for down_s, start it again on the same data."""
        node = self.node(node_id)
        with self._fault(f"SIGKILL {node_id}, down {down_s:g}s, restart", node_id):
            node.kill()
            time.sleep(down_s)
            node.start()

    def pause(self, node_id: str, paused_s: float) -> None:
        """SIGSTOP a node (it hangs with its sockets open), SIGCONT it after paused_s."""
        node = self.node(node_id)
        with self._fault(f"SIGSTOP {node_id} for {paused_s:g}s, SIGCONT", node_id):
            node.signal(signal.SIGSTOP)
            try:
                time.sleep(paused_s)
            finally:
                node.signal(signal.SIGCONT)

    @contextmanager
    def stalled_disks(self, node_id: str | None = None) -> Iterator[None]:
        """While the block runs, the disk writes of node_id (None: of every node) wait
        (faults/slow_disk.py); the nodes run on meanwhile."""
        nodes = [n for n in self.nodes if node_id is None or n.name == node_id]
        with stalled_writes([node.pid for node in nodes], self.base):
            with self._fault(f"disk writes of {node_id or 'every node'} stalled", node_id):
                yield

    def partition(self, node_id: str, how: str, seconds: float, *, delay_s: float = 0.3) -> None:
        """Spoils the router-node link through the node's proxy: "delay", "blackhole" or
        "cut", for seconds, then heals it. A delayed link is timed meanwhile: reads at ALL
        through the first router, one after another, need the node's answer (slow_reads)."""
        proxy = self.proxies[node_id]
        spoil = {
            "delay": lambda: proxy.delay(delay_s),
            "blackhole": proxy.blackhole,
            "cut": proxy.cut,
        }[how]
        name = f"proxy {how} {node_id} for {seconds:g}s"
        name += f" ({delay_s * 1000:.0f} ms)" if how == "delay" else ""
        if how == "delay":
            self.reads_before[name] = timed_reads_at_all(self.router.address, 5)
        with self._fault(name, node_id):
            spoil()
            try:
                if how == "delay":
                    until = time.monotonic() + seconds
                    self.slow_reads[name] = timed_reads_at_all(self.router.address, until=until)
                else:
                    time.sleep(seconds)
            finally:
                proxy.heal()

    def restart_router(self, index: int = 0, *, kill: bool = True) -> None:
        """SIGKILL (or SIGTERM) a router and start it again."""
        router = self.routers[index]
        with self._fault(f"{'SIGKILL' if kill else 'SIGTERM'} router {router.name}, restart"):
            if kill:
                router.kill()
            else:
                router.stop()
            router.start()


def start_faulty_cluster(
    base: Path,
    *,
    nodes: int = 3,
    routers: int = 1,
    proxied: Sequence[str] = (),
    replication: int = 3,
    read_quorum: int = 2,
    write_quorum: int = 2,
    router_extra: Sequence[str] = (),
    node_extra: Sequence[str] = (),
    timeouts: Mapping[str, int] | None = None,
) -> FaultyCluster:
    """Starts nodes n1..nN (those in proxied behind a FaultProxy) and routers r1..rM.
    timeouts: None keeps the harness's test-tuned [timeouts]; otherwise the table the
    routers get instead ({}: none, so the router's built-in defaults apply)."""
    node_ids = [f"n{i + 1}" for i in range(nodes)]
    ports = {node_id: (free_port(), free_port()) for node_id in proxied}
    proxies = {
        node_id: FaultProxy(f"127.0.0.1:{port}", f"127.0.0.1:{exchange}")
        for node_id, (port, exchange) in ports.items()
    }
    node_procs: list[Proc] = []
    cluster = FaultyCluster(base, node_procs, [], base / "cluster.toml", proxies)
    try:
        for proxy in proxies.values():
            proxy.start()
        for node_id in node_ids:
            extra = list(node_extra)
            if node_id in proxies:  # the exchange port too is reached through the proxy
                advertised = proxies[node_id].addresses[1].rpartition(":")[2]
                extra += ["--exchange-port", str(ports[node_id][1])]
                extra += ["--advertise-exchange-port", advertised]
            port = ports[node_id][0] if node_id in ports else None
            node_procs.append(shardd_proc(base, node_id, port=port, extra=extra))
        seen = [
            dataclasses.replace(n, address=proxies[n.name].address) if n.name in proxies else n
            for n in node_procs
        ]
        write_cluster_toml(
            cluster.config,
            seen,
            replication=replication,
            read_quorum=read_quorum,
            write_quorum=write_quorum,
        )
        if timeouts is not None:
            set_timeouts(cluster.config, timeouts)
        for proc in node_procs:
            proc.start(wait=False)
        for proc in node_procs:
            wait_serving(proc.address)
        for i in range(routers):
            cluster.routers.append(
                router_proc(base, cluster.config, f"r{i + 1}", extra=router_extra).start()
            )
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_nodes_up(router: str, timeout_s: float = 20.0) -> None:
    """Blocks until the router sees every node UP."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(router) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        while True:
            try:
                if admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=2).healthy:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"router {router}: not every node UP after {timeout_s}s")
            time.sleep(0.1)


def wait_node_state(
    router: str, node_id: str, state: int, timeout_s: float = 10.0, *, counted: bool = False
) -> None:
    """Blocks until the router's Admin view shows node_id in state (admin_pb2.UP/DOWN);
    counted: UP and counted toward quorums again (its data directory checked, which a
    restarted node's is some time after it is UP: until then each of its keys needs one
    reply more)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(router) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        while True:
            nodes = admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=2).nodes
            node = next(n for n in nodes if n.id == node_id)
            if node.state == state and (not counted or node.directory == "ok"):
                return
            if time.monotonic() > deadline:
                counting = " and counted" if counted else ""
                name = admin_pb2.NodeState.Name(state)
                raise TimeoutError(f"{node_id} never reached {name}{counting}")
            time.sleep(0.05)


def read_records(address: str, keys: Sequence[bytes]) -> list[replica_pb2.Record]:
    """What one node holds for keys (tombstones included; version 0 = nothing)."""
    records: list[replica_pb2.Record] = []
    with grpc.insecure_channel(address) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)
        while len(records) < len(keys):
            # A node answers a prefix of the keys within max_bytes (large values); the
            # rest is asked again.
            start = len(records)
            chunk = replica_pb2.ReadRequest(
                keys=keys[start : start + READ_CHUNK], max_bytes=READ_BYTES
            )
            records.extend(replica.Read(chunk, timeout=10).records)
    return records


def digest(address: str) -> replica_pb2.DigestResponse:
    """The node's digest of its whole key range."""
    with grpc.insecure_channel(address) as channel:
        reply: replica_pb2.DigestResponse = replica_pb2_grpc.ReplicaStub(channel).Digest(
            replica_pb2.DigestRequest(), timeout=10
        )
        return reply


def read_all_at_all(router: str, keys: Sequence[bytes]) -> None:
    """Reads every key at consistency ALL: read repair brings every replica up to date."""
    with grpc.insecure_channel(router) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for i in range(0, len(keys), READ_CHUNK):
            request = kv_pb2.BatchGetRequest(keys=keys[i : i + READ_CHUNK], consistency=kv_pb2.ALL)
            kv.BatchGet(request, timeout=10)


def converge(cluster: Cluster, keys: Sequence[bytes], timeout_s: float = 30.0) -> float:
    """Seconds from now until every node reports the same digest, reading every key at ALL
    through the first router meanwhile. Every node must hold every key (nodes == N)."""
    started = time.monotonic()
    wait_nodes_up(cluster.router.address, timeout_s)
    while True:
        read_all_at_all(cluster.router.address, keys)
        time.sleep(0.2)
        digests = {digest(node.address).digest for node in cluster.nodes}
        if len(digests) == 1:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"replicas did not converge in {timeout_s}s: {digests}")


def final_state(cluster: Cluster, keys: Sequence[bytes]) -> dict[bytes, Final]:
    """Each key's record, asserting every node holds the same one (call after converge)."""
    views = [read_records(node.address, keys) for node in cluster.nodes]
    for node, view in zip(cluster.nodes[1:], views[1:], strict=True):
        assert view == views[0], f"{node.name} differs from {cluster.nodes[0].name}"
    return {key: Final.of(record) for key, record in zip(keys, views[0], strict=True)}


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples the RSS of processes every interval on a thread; peak holds the maxima."""

    def __init__(self, procs: Sequence[Proc], interval_s: float = 0.1) -> None:
        self._procs = procs
        self._interval_s = interval_s
        self.peak: dict[str, float] = {p.name: 0.0 for p in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self._procs:
                try:
                    self.peak[proc.name] = max(self.peak[proc.name], rss_mb(proc.pid))
                except (OSError, ValueError):
                    pass
            self._stop.wait(self._interval_s)
