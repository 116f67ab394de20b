"""The fault-injection harness: a recorded workload, faults to inject, and checks of the history.

Jepsen's shape on a small scale: `workload` drives concurrent operations through the SDK
and records each one in a `history.History` (start, end, outcome: ok, failed or unknown);
`nemesis` kills, pauses and restarts processes; `proxy.FaultProxy` sits between a router
and a node to delay, black-hole or cut their connections; `checker` reads the final state
from every replica and judges the history against it.
"""
