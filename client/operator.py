"""Operator calls on a router's Admin service for ``shardctl``: status, backup, restore.

A blocking, deliberately small client: one channel per router address, each call sent
to the first address that does not answer UNAVAILABLE (no retries beyond that: an
operator sees the error and runs the command again). Every call carries the bearer token
and a request id, like the SDK's. Errors are the SDK's ``ShardKVError`` classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from shardkv.common import requestid
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2

from .errors import from_rpc_error
from .transport import TLSConfig, auth_metadata, channel_options, split_targets

T = TypeVar("T")


class OperatorError(Exception):
    """An operator command cannot do what was asked (bad backup directory, a missing
    optional dependency); the message names the file or the fix."""


class Operator:
    """Admin calls against one or more routers (see the module docstring)."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        timeout: float = 5.0,
        tls: TLSConfig | None = None,
        bearer_token: str | None = None,
    ) -> None:
        self._timeout = timeout
        self._auth = auth_metadata(bearer_token) or ()
        credentials = tls.credentials() if tls else None
        self._channels: dict[str, grpc.Channel] = {}
        for address in split_targets(targets):
            self._channels[address] = (
                grpc.insecure_channel(address, options=channel_options())
                if credentials is None
                else grpc.secure_channel(address, credentials, options=channel_options())
            )
        self._stubs = {
            address: admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
            for address, channel in self._channels.items()
        }

    def __enter__(self) -> Operator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (*self._auth, (requestid.HEADER, requestid.current.get() or requestid.new_id()))

    def _call(self, call: Callable[[Any, tuple[tuple[str, str], ...]], T]) -> T:
        """call(stub, metadata) on the first router that does not answer UNAVAILABLE."""
        metadata = self._metadata()
        for position, (address, stub) in enumerate(self._stubs.items()):
            try:
                return call(stub, metadata)
            except grpc.RpcError as err:
                last = position == len(self._stubs) - 1
                if err.code() is not grpc.StatusCode.UNAVAILABLE or last:
                    raise from_rpc_error(err, target=address) from err
        raise AssertionError("no router address")  # split_targets guarantees one

    def topology(self) -> admin_pb2.Topology:
        reply: admin_pb2.Topology = self._call(
            lambda stub, md: stub.GetTopology(
                admin_pb2.GetTopologyRequest(), timeout=self._timeout, metadata=md
            )
        )
        return reply

    def status(self) -> admin_pb2.ClusterStatus:
        """The topology and every reachable node's figures."""
        reply: admin_pb2.ClusterStatus = self._call(
            lambda stub, md: stub.GetStatus(
                admin_pb2.GetStatusRequest(), timeout=self._timeout, metadata=md
            )
        )
        return reply

    def backup(self, node_id: str) -> Iterator[replica_pb2.SnapshotBatch]:
        """The batches of a consistent copy of node_id's store. The stream has no overall
        deadline (a large store takes as long as it takes); errors are ShardKVError."""
        metadata = self._metadata()
        for position, (address, stub) in enumerate(self._stubs.items()):
            received = False
            try:
                for batch in stub.Backup(
                    admin_pb2.BackupRequest(node_id=node_id), metadata=metadata
                ):
                    received = True
                    yield batch
                return
            except grpc.RpcError as err:
                last = position == len(self._stubs) - 1
                if received or err.code() is not grpc.StatusCode.UNAVAILABLE or last:
                    raise from_rpc_error(err, target=address) from err

    def restore(self, records: Sequence[replica_pb2.Record]) -> admin_pb2.RestoreResponse:
        """Writes records with their own versions (last write wins on every replica)."""
        request = admin_pb2.RestoreRequest(records=records)
        reply: admin_pb2.RestoreResponse = self._call(
            lambda stub, md: stub.Restore(request, timeout=self._timeout, metadata=md)
        )
        return reply
