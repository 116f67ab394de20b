"""The cluster's topology and how it changes while the cluster serves.

- ``topology``       cluster.toml read into a frozen, validated Topology.
- ``topology_store`` where the topology is kept: the store interface (compare-and-swap,
  watch), its conflicts, and the text format written atomically.
- ``store_file``     the store as one cluster.toml (a lock file and a re-read), for one host.
- ``store_etcd``     the store as one etcd key (a Txn on its mod_revision), for many hosts.
- ``etcd_client``    the etcd calls it makes: read, compare-and-swap, watch, leases, with failover.
- ``etcd_security``  TLS and user/password for etcd (the password from a file, never logged).
- ``writer_claim``   the router's writer id held in etcd under a lease, across hosts.
- ``live_topology``  the running router's node set: applies, persists and watches changes.
- ``identity``       which nodes count toward R and W: each data directory's identity
  checked against the topology (new, behind, foreign), generations claimed and recorded.
- ``claims``         claims of fresh directories: a new cluster's half made by another router,
  a joining node's before its move streams.
- ``move_plan``      what a node add or remove must copy, from where to where, and progress.
- ``node_checks``    what a node must be to join: valid, reachable, empty.
- ``move_driver``    drives one move through its persisted steps (fence, stream, switch,
  drop, done), resumed at its step by a restarted or a taking-over driver.
- ``move_steps``     a move's counting, fencing, re-homing, drops and an abort's purges.
- ``move_lease``     one driver per move on etcd (a key on a lease); dead drivers taken over.
- ``range_streamer`` copies token ranges from one node to another, batch by batch.
- ``fencing``        the epoch a router routes under, catching up on a node's refusal,
  routing a request again, and installing an epoch on nodes (Replica.Fence).
- ``epoch_queues``   coalescing per routing epoch (a call carries items of one epoch).
"""
