"""What shows that an injected fault took effect, watched while it lasts.

A fault that silently did nothing (a proxy that forwards what it should drop, a signal that
missed) leaves a fault test passing for the wrong reason. `HealthWatch` polls a router's
Admin GetHealth for one node on a thread: a black-holed, cut, killed or paused node must be
seen DOWN, and the reason (last_error) says how the router found out. `timed_reads_at_all`
times reads at consistency ALL through a router: each needs every replica's answer, so a
slowed router-node link shows in every one of them.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

# A key outside every workload's prefix, read at ALL to time a slowed link.
PROBE_KEY = b"probe/slow-link"
# A gRPC status code named in a reason ("health check failed: DEADLINE_EXCEEDED: ...").
_CODE = re.compile(r"\b[A-Z][A-Z_]{4,}\b")


@dataclass(frozen=True)
class Sample:
    """What a router's Admin GetHealth said of one node at one moment (time.monotonic())."""

    at: float
    state: str  # "UP", "DOWN" or "NODE_STATE_UNKNOWN"
    reason: str  # last_error: why it was marked DOWN (empty when UP)


def describe(samples: Sequence[Sample]) -> str:
    """How many samples showed the node DOWN after UP (seen_down), and the status codes
    their reasons name."""
    down = seen_down(samples)
    codes = Counter(code for s in down for code in set(_CODE.findall(s.reason)))
    named = ", ".join(f"{code} x{count}" for code, count in sorted(codes.items()))
    first = samples[0].state if samples else "never answered"
    figures = f"{first} at first, DOWN in {len(down)} of {len(samples)} samples"
    return figures + (f" ({named})" if named else "")


class HealthWatch:
    """Polls a router's GetHealth for one node on a thread until stopped; keeps every answer
    (a router that does not answer, e.g. while it restarts, leaves a gap). start() takes
    the first sample before it returns: what the router believed before the fault."""

    def __init__(self, router: str, node_id: str, interval_s: float = 0.1) -> None:
        self._node_id, self._interval_s = node_id, interval_s
        self._channel = grpc.insecure_channel(router)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HealthWatch:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._halt.set()
        self._thread.join(10)
        self._channel.close()
        return self.samples

    def _run(self) -> None:
        while not self._halt.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            nodes = self._admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=2).nodes
        except grpc.RpcError:
            return
        for node in nodes:
            if node.id == self._node_id:
                state = admin_pb2.NodeState.Name(node.state)
                self.samples.append(Sample(time.monotonic(), state, node.last_error))


def seen_down(samples: Sequence[Sample]) -> list[Sample]:
    """The samples that showed the node DOWN after one had shown it UP: a DOWN left over
    from before the fault is not the fault's doing."""
    first_up = next((i for i, s in enumerate(samples) if s.state == "UP"), len(samples))
    return [sample for sample in samples[first_up:] if sample.state == "DOWN"]


def timed_reads_at_all(
    router: str, count: int = 0, *, until: float = 0.0, key: bytes = PROBE_KEY
) -> list[float]:
    """Seconds each of count reads of key at ALL took through router, one after another
    (or as many as begin before time.monotonic() reaches until); failed reads left out."""
    took: list[float] = []
    request = kv_pb2.GetRequest(key=key, consistency=kv_pb2.ALL)
    with grpc.insecure_channel(router) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        done = 0
        while done < count or time.monotonic() < until:
            started = time.monotonic()
            try:
                kv.Get(request, timeout=5)
            except grpc.RpcError:
                time.sleep(0.05)  # e.g. the node is DOWN: ALL fails at once; do not spin
            else:
                took.append(time.monotonic() - started)
            done += 1
    return took
