"""Hint hand-off routes each Apply under the epoch of the placement that chose its
destinations (router/requests/hint_delivery.py), against an in-process node: a node fenced
at a later epoch refuses the page, which then waits for the next round, where the router
routes it again under the new placement. Sent under whatever epoch the router served when
the call left, a page chosen under the old placement would land on a node that owns the
key no more, and the holder would delete the hint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.hint_delivery import deliver
from shardkv.router.requests.node_client import NodeClient
from shardkv.shardd.server import ServerConfig, ShardServer
from shardkv.v1 import replica_pb2


@pytest.mark.timeout(30)
def test_a_page_chosen_under_an_older_epoch_is_refused_by_a_node_fenced_later(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        server = ShardServer(ServerConfig(node_id="n1", data_dir=tmp_path, listen="127.0.0.1:0"))
        port = await server.start()
        client = NodeClient(
            NodeConfig("n1", f"127.0.0.1:{port}"),
            limits=DEFAULT_LIMITS,
            call_timeout_s=5,
            on_failure=lambda failure, timeout: None,
            token=None,
        )
        records = [replica_pb2.Record(key=b"k", value=b"v", version=1 << 40, writer=1)]
        ring = Ring({"n1": 1})
        health = NodeHealth(["n1"])
        health.mark_up("n1")
        try:
            await client.fence(5, 5)

            async def page(epoch: int) -> int:
                delivered = await deliver(
                    records,
                    "n1",
                    clients={"n1": client},
                    health=health,
                    placement=Placement(Layout(epoch, ring)),
                    replication=1,
                )
                return len(delivered.records)

            assert await page(4) == 0, "a page routed under epoch 4 got past a fence at 5"
            assert not (await client.read_batch([b"k"], 5))[0].version
            assert await page(5) == 1
            assert (await client.read_batch([b"k"], 5))[0].value == b"v"
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(main())
