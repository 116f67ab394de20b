"""etcd leases as shardkv holds them (router/membership/etcd_client.py), against a real etcd
3.4 member: put-if-absent of a key on a lease names the holder to the loser, a kept lease
outlives its TTL, revoking frees the key, and a keeper reports the loss when etcd says the
lease is gone (revoked behind its back) or when no renewal is answered within the TTL
(etcd paused by SIGSTOP)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_harness import etcd_members, etcdctl, start_etcd
from harness import Proc, failed
from shardkv.router.membership.etcd_client import EtcdClient

KEY = b"/shardkv/lease-test/holder"


@pytest.fixture
def etcd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proc]:
    """One etcd member, stopped by PID (continued first if a test left it paused)."""
    (member,) = etcd_members(tmp_path)
    try:
        start_etcd([member])
        yield member
    finally:
        if failed(request):
            print(member.log()[-8000:])
        member.signal(signal.SIGCONT)
        member.stop()


async def wait_lost(lost: asyncio.Event, timeout_s: float) -> float:
    """Seconds until lost is set (fails the test after timeout_s)."""
    start = time.monotonic()
    await asyncio.wait_for(lost.wait(), timeout_s)
    return time.monotonic() - start


@pytest.mark.timeout(60)
def test_claim_keep_alive_and_revoke(etcd: Proc) -> None:
    async def run() -> None:
        client = EtcdClient([etcd.address])
        try:
            lease = await client.grant(2)
            assert lease.ttl_s >= 2 and lease.alive()
            won = await client.put_if_absent(KEY, b"router r1", lease=lease.id)
            assert won.won and won.value == b"router r1" and won.lease == lease.id

            other = await client.grant(2)
            refused = await client.put_if_absent(KEY, b"router r2", lease=other.id)
            assert not refused.won
            assert (refused.value, refused.lease) == (b"router r1", lease.id), refused

            # Kept alive, the claim outlives its TTL twice over; other, not kept, expires.
            reasons: list[str] = []
            lease.keep_alive(reasons.append)
            await asyncio.sleep(2.5 * lease.ttl_s)
            assert lease.alive() and not reasons
            assert (await client.get(KEY)).value == b"router r1"
            assert await client.renew(other.id) == 0, "an unkept lease outlived its TTL"

            # Revoked, the key goes with the lease and the next claim wins.
            await lease.revoke()
            assert not lease.alive() and not reasons
            assert (await client.get(KEY)).value is None
            third = await client.grant(2)
            assert (await client.put_if_absent(KEY, b"router r3", lease=third.id)).won
            await client.revoke(other.id)  # already expired: not an error
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_keeper_reports_a_lease_revoked_behind_its_back(etcd: Proc) -> None:
    async def run() -> None:
        client = EtcdClient([etcd.address])
        try:
            lease = await client.grant(3)
            lost = asyncio.Event()
            reasons: list[str] = []
            lease.keep_alive(lambda reason: (reasons.append(reason), lost.set()))
            await asyncio.to_thread(etcdctl, [etcd], "lease", "revoke", f"{lease.id:x}")
            # The next renewal (within TTL/3) hears that the lease is gone.
            waited = await wait_lost(lost, lease.ttl_s)
            assert not lease.alive()
            assert reasons == [lease.lost] and "no longer holds it" in reasons[0], reasons
            assert waited <= lease.ttl_s / 3 + 1.0, waited
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_keeper_reports_loss_within_the_ttl_when_etcd_does_not_answer(etcd: Proc) -> None:
    async def run() -> None:
        client = EtcdClient([etcd.address], call_timeout_s=1.0)
        try:
            lease = await client.grant(3)
            assert (await client.put_if_absent(KEY, b"router r1", lease=lease.id)).won
            lost = asyncio.Event()
            reasons: list[str] = []
            lease.keep_alive(lambda reason: (reasons.append(reason), lost.set()))
            await asyncio.sleep(1.5)  # one renewal answered
            paused = time.monotonic()
            etcd.signal(signal.SIGSTOP)
            try:
                await wait_lost(lost, lease.ttl_s + 2)
                # Lost no later than etcd could expire it: within a TTL of the pause (the
                # last renewal was sent before it), give or take the event loop's latency.
                assert time.monotonic() - paused <= lease.ttl_s + 0.2, time.monotonic() - paused
                assert not lease.alive()
                assert "no renewal answered within its TTL" in reasons[0], reasons
            finally:
                etcd.signal(signal.SIGCONT)
            # etcd, back, expires the lease it did not hear from, and the key with it.
            deadline = time.monotonic() + 3 * lease.ttl_s
            while (await client.get(KEY)).value is not None:
                assert time.monotonic() < deadline, "the lost lease's key outlived it"
                await asyncio.sleep(0.2)
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.timeout(90)
def test_keeper_fails_over_when_its_member_stops_answering(tmp_path: Path) -> None:
    """Three members; the client's first endpoint (a follower) is paused for twice the TTL:
    renewals move to another member in time, and the lease is never lost."""
    members = etcd_members(tmp_path, 3)
    try:
        start_etcd(members)
        leader = etcdctl(members, "endpoint", "status", "--write-out=fields")
        leader_id = re.findall(r'"Leader" : (\d+)', leader)[0]
        ids = dict(zip(re.findall(r'"MemberID" : (\d+)', leader), members, strict=True))
        follower = next(m for member_id, m in ids.items() if member_id != leader_id)
        order = [follower, *(m for m in members if m is not follower)]

        async def run() -> None:
            client = EtcdClient([m.address for m in order])
            try:
                lease = await client.grant(3)
                reasons: list[str] = []
                lease.keep_alive(reasons.append)
                await asyncio.sleep(1.5)
                follower.signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(2 * lease.ttl_s)
                    assert lease.alive() and not reasons, reasons
                finally:
                    follower.signal(signal.SIGCONT)
                await lease.revoke()
            finally:
                await client.close()

        asyncio.run(run())
    finally:
        for member in members:
            member.signal(signal.SIGCONT)
            member.stop()
