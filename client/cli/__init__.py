"""``shardctl``, the command line over the SDK.

- ``shardctl``   the command: global flags, get/put/delete/scan, topology, health.
- ``topology``   node add/remove, moves, repair.
- ``operations`` status, backup, restore; ``status`` draws the cluster table (rich);
  ``backup`` the backup directory and its format.
"""
