"""The log line format of every shardkv server: one key=value line per event.

    ts=2026-01-02T03:04:05.678 level=INFO proc=n1 logger=shardkv.serving.telemetry
    event=request method=/shardkv.v1.Replica/Apply code=OK duration_ms=1.2 request_id=9f2c…

(one line; cut in two here).

``proc`` names the process (the node or router id), so lines from several processes can
be merged and still told apart; ``event`` is the message, whose own fields are key=value
too. A traceback is kept on the same line (``exc='…'``, newlines escaped), so one event is
always one line for grep and log shippers.
"""

from __future__ import annotations

import logging
import sys


class KeyValueFormatter(logging.Formatter):
    """ts=… level=… proc=… logger=… event=<message>, tracebacks escaped onto the line."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}"
            f" level={record.levelname} proc={self._process} logger={record.name}"
            f" event={record.getMessage()}"
        )
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line.replace("\n", "\\n")


def setup_logging(level: str, *, process: str) -> None:
    """Every log line to stderr in the key=value format, at level and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(process))
    logging.basicConfig(level=level, handlers=[handler], force=True)
