"""A router paused across a whole move cannot write, read or drop under the old placement.

Three nodes with N=R=W=1 (each key on one node, so a write that lands only on a node that
gave the key away is lost outright, and a read from it is stale) and two routers whose
watch interval is a minute, so the paused router learns of the move only from the nodes'
fence refusals. r2 is SIGSTOPped with a writer and a reader running through it; n4 is
added through r1 and the move runs to MOVE_DONE (transition, stream, switch, drop);
then r2 resumes. Its clients' writes must keep succeeding (routed again under the new
epoch, unseen by them) and the history checker must find nothing lost or stale. (With
N=1, a node r2 has not checked yet does not count toward quorums, so r2 refuses the keys
of n4 for the moment it takes to check n4's data directory: those puts fail, outcome
unknown, which the checker allows; none may fail for a fence.)

To watch it fail, run it with SHARDKV_TEST_UNFENCED=1: the nodes then run with their fence
checks patched out (the test's own switch; shardd has no such option), and the paused
router's writes land on the node that gave their keys away.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import (
    Cluster,
    Proc,
    router_proc,
    shardd_proc,
    start_all,
    stopped_after,
    write_cluster_toml,
)
from shardkv.client import AsyncClient, Client
from shardkv.common.hlc import writer_number
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, admin_pb2_grpc

from faults.checker import check
from faults.history import OK, History
from faults.move_load import agreed_records
from faults.verdict import LOST, STALE

UNFENCED = os.environ.get("SHARDKV_TEST_UNFENCED") == "1"
# Runs shardd with the fence checks of shardkv.shardd.fence disabled (the test's switch).
_UNFENCED_SHARDD = (
    "import sys; from shardkv.shardd import fence;"
    " fence.Fence.admit = lambda *a, **k: None;"
    " fence.Fence.admit_purge = lambda *a, **k: None;"
    " from shardkv.common.launch import shardd; sys.exit(shardd())"
)


def _node(base: Path, node_id: str) -> Proc:
    proc = shardd_proc(base, node_id)
    if UNFENCED:
        proc.argv = [sys.executable, "-c", _UNFENCED_SHARDD, *proc.argv[1:]]
    return proc


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    nodes = [_node(tmp_path, f"n{i}") for i in range(1, 5)]
    config = write_cluster_toml(
        tmp_path / "cluster.toml", nodes[:3], replication=1, read_quorum=1, write_quorum=1
    )
    text = config.read_text().replace("[timeouts]\n", "[timeouts]\nwatch_interval_ms = 60000\n")
    config.write_text(text + "\n[repair]\ninterval_s = 0\n")
    routers = [router_proc(tmp_path, config, "r1"), router_proc(tmp_path, config, "r2")]
    with stopped_after(Cluster(tmp_path, nodes, routers, config), request) as running:
        start_all(nodes, routers)
        yield running


class Load(threading.Thread):
    """Through one router: puts of fresh keys, and gets of keys it put earlier (both
    recorded in a History under the router's name, one clock per router)."""

    def __init__(self, router: Proc, history: History) -> None:
        super().__init__(daemon=True)
        self.router = router
        self.history = history
        self.halt = threading.Event()
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._load())
        except BaseException as err:
            self.crash = err

    async def _load(self) -> None:
        client = AsyncClient(self.router.address, timeout=5)
        name = self.router.name
        try:
            i = 0
            while not self.halt.is_set():
                key = f"{name}/{i:05d}".encode()
                await self.history.put(name, key, b"v%d" % i, client.put(key, b"v%d" % i))
                earlier = f"{name}/{i // 2:05d}".encode()
                await self.history.get(name, earlier, client.get_record(earlier))
                i += 1
        finally:
            await client.close()

    def finish(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive() and self.crash is None, f"the load crashed: {self.crash!r}"


def _admin(router: Proc) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(router.address))  # type: ignore[no-untyped-call]


def _wait_done(router: Proc, timeout_s: float = 60.0) -> admin_pb2.Move:
    stub = _admin(router)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        moves = stub.GetMoves(admin_pb2.GetMovesRequest(), timeout=5)
        if not moves.HasField("current") and moves.history:
            return moves.history[-1]
        time.sleep(0.1)
    raise TimeoutError(f"the move did not finish in {timeout_s}s")


@pytest.mark.timeout(180)
def test_router_paused_across_a_move_cannot_write_under_the_old_placement(
    cluster: Cluster,
) -> None:
    with Client(cluster.router.address) as client:
        client.put_many({b"pre/%05d" % i: b"p" for i in range(2000)})
    r1, r2 = cluster.routers
    history = History()
    loads = [Load(r1, history), Load(r2, history)]
    for load in loads:
        load.start()
    time.sleep(1.0)
    r2.signal(signal.SIGSTOP)
    try:
        n4 = cluster.node("n4")
        _admin(r1).AddNode(admin_pb2.AddNodeRequest(id="n4", address=n4.address), timeout=30)
        move = _wait_done(r1)
        assert move.state == admin_pb2.MOVE_DONE, move
        assert move.keys_dropped > 0, move  # the givers dropped what n4 took over
    finally:
        r2.signal(signal.SIGCONT)
    resumed = time.monotonic()
    time.sleep(4.0)
    for load in loads:
        load.finish()

    ops = history.ops
    after = [op for op in ops if op.worker == "r2" and op.start >= resumed]
    written_after = sum(op.kind == "put" and op.outcome == OK for op in after)
    fenced_after = [op.error for op in after if op.outcome != OK and "epoch" in op.error]
    assert written_after > 20, f"r2 acknowledged {written_after} puts after resuming"
    assert not fenced_after, f"r2's clients saw fence errors: {fenced_after[:3]}"

    ring = Ring({f"n{i}": 1 for i in range(1, 5)})
    finals = agreed_records(cluster, ring, 1, sorted({op.key for op in ops}))
    verdict = check(ops, finals, writer_of=lambda op: writer_number(op.worker))
    print(
        f"paused router across a move: {verdict.summary()}; r2 after resuming: {written_after} puts"
    )
    assert not verdict.of(LOST) and not verdict.of(STALE), "\n".join(verdict.problems())
    assert not verdict.problems(), "\n".join(verdict.problems())
    epochs = {
        _admin(r).GetTopology(admin_pb2.GetTopologyRequest(), timeout=5).epoch for r in (r1, r2)
    }
    assert len(epochs) == 1, f"the routers serve different epochs: {epochs}"
