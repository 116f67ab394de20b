"""The one rule a node id must follow, wherever an id enters (SDK, router, node).

A node id names more than a node: it is a file name in a backup (``nodes/<id>.snapshot``),
part of an LMDB database name on other nodes (``hints:<id>``), a ring label and a word in
logs and terminals. So it is a plain name: a letter or digit, then letters, digits, ``.``,
``_`` or ``-``, at most ``MAX_NODE_ID_CHARS`` characters. That excludes ``/``, ``..``,
spaces, control characters and a leading ``-`` (read as a flag) or ``.`` (a hidden file).
"""

from __future__ import annotations

import re

from shardkv.common.limits import LimitExceeded

# 64 characters: ids are names people type, and the longest id must still fit every place
# an id goes, with room to spare: a node's hint target (shardkv.shardd.store allows 255
# bytes), the hint database name "hints:<id>" (LMDB keys: 511 bytes), and the backup file
# name "<id>.snapshot.partial" (file names: 255 bytes).
MAX_NODE_ID_CHARS = 64
NODE_ID_RULE = f"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NODE_ID_CHARS - 1}}}"
_NODE_ID = re.compile(NODE_ID_RULE)

__all__ = ["MAX_NODE_ID_CHARS", "NODE_ID_RULE", "BadNodeId", "check_node_id"]


class BadNodeId(LimitExceeded):
    """A node id that is not a plain name; the message quotes it and states the rule."""


def check_node_id(node_id: str, what: str = "node id") -> None:
    """Raises BadNodeId unless node_id follows the rule (what names it in the message)."""
    if _NODE_ID.fullmatch(node_id):
        return
    if not node_id:
        problem = "must not be empty"
    elif len(node_id) > MAX_NODE_ID_CHARS:
        problem = f"{node_id[:32]!r}... is longer than {MAX_NODE_ID_CHARS} characters"
    else:
        problem = f"{node_id!r} is not a plain name"
    raise BadNodeId(f"{what} {problem}: ids match {NODE_ID_RULE}")
