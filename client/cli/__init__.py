"""``shardctl``, the command line over the SDK.

- ``shardctl``   the command: global flags, get/put/delete/scan, topology, health.
- ``topology``   node add/remove, moves, repair.
- ``operations`` status, backup, restore; ``status`` draws the cluster table (rich);
  ``backup`` the backup directory and its format; ``backup_files`` its files, written
  for the user alone and never through a link.

Every call goes through the SDK's ``Client`` (its Admin methods: ``shardkv.client.admin``).
"""


class CommandError(Exception):
    """A command cannot do what was asked (an unusable backup directory, a missing
    optional dependency); the message names the file or the fix."""
