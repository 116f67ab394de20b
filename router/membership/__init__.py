"""The cluster's topology and how it changes while the cluster serves.

- ``topology``       cluster.toml read into a frozen, validated Topology.
- ``topology_store`` a Topology written back to cluster.toml atomically.
- ``live_topology``  the running router's node set: applies, persists and watches changes.
- ``move_plan``      what a node add or remove must copy, from where to where, and progress.
- ``node_checks``    what a node must be to join: valid, reachable, empty.
- ``move_driver``    drives one move through its persisted steps (stream, switch, drop).
- ``range_streamer`` copies token ranges from one node to another, batch by batch.
"""
