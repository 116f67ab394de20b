"""The event loop shardd and the router run on: uvloop's.

Every frame a server answers costs a few turns of its event loop (its socket read, a task
started and resumed, the answer written), and a routed write three nodes' and a router's
turns. asyncio's own loop runs each turn in Python; uvloop runs it in C over libuv, with
the same asyncio API. A Put at one in flight through a router of 3 nodes, alternating 8 s
cells of each loop three times (benchmarks/HISTORY.md, *The servers on uvloop*): router
521-530 µs of CPU against 571-608, each node 442-448 against 509-536, p50 1.49-1.50 ms
against 1.63-1.70; a lone shardd 402-417 µs against 448-477.

uvloop's clock counts whole milliseconds (libuv's): a timer fires up to half a
millisecond early or a millisecond late, and a reply time is measured to the millisecond
(0.0 s for a fast one). Frame deadlines travel in milliseconds, a speculative read waits
at least 5 ms and a node is judged slow only 10 ms beyond the median (replica_latency.py);
what did assume a finer clock now judges a moment come within a millisecond
(deadlines.come) and tells "no answer yet" from an answer in 0.0 s (read_round.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs a server's main coroutine to its end on a new uvloop loop, as asyncio.run."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
