from shardkv.v1 import replica_pb2 as _replica_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNKNOWN: _ClassVar[NodeState]
    UP: _ClassVar[NodeState]
    DOWN: _ClassVar[NodeState]

class MoveKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVE_KIND_UNSPECIFIED: _ClassVar[MoveKind]
    MOVE_ADD: _ClassVar[MoveKind]
    MOVE_REMOVE: _ClassVar[MoveKind]

class MoveState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVE_STATE_UNSPECIFIED: _ClassVar[MoveState]
    MOVE_SETTLING: _ClassVar[MoveState]
    MOVE_COUNTING: _ClassVar[MoveState]
    MOVE_STREAMING: _ClassVar[MoveState]
    MOVE_SWITCHED: _ClassVar[MoveState]
    MOVE_DONE: _ClassVar[MoveState]
    MOVE_FAILED: _ClassVar[MoveState]

class RebuildState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REBUILD_STATE_UNSPECIFIED: _ClassVar[RebuildState]
    REBUILD_RUNNING: _ClassVar[RebuildState]
    REBUILD_DONE: _ClassVar[RebuildState]
    REBUILD_FAILED: _ClassVar[RebuildState]
NODE_STATE_UNKNOWN: NodeState
UP: NodeState
DOWN: NodeState
MOVE_KIND_UNSPECIFIED: MoveKind
MOVE_ADD: MoveKind
MOVE_REMOVE: MoveKind
MOVE_STATE_UNSPECIFIED: MoveState
MOVE_SETTLING: MoveState
MOVE_COUNTING: MoveState
MOVE_STREAMING: MoveState
MOVE_SWITCHED: MoveState
MOVE_DONE: MoveState
MOVE_FAILED: MoveState
REBUILD_STATE_UNSPECIFIED: RebuildState
REBUILD_RUNNING: RebuildState
REBUILD_DONE: RebuildState
REBUILD_FAILED: RebuildState

class NodeStatus(_message.Message):
    __slots__ = ("id", "address", "weight", "state", "last_error", "hints_pending", "ring_share", "membership", "directory", "generation", "expected_generation")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    HINTS_PENDING_FIELD_NUMBER: _ClassVar[int]
    RING_SHARE_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    weight: int
    state: NodeState
    last_error: str
    hints_pending: int
    ring_share: float
    membership: str
    directory: str
    generation: int
    expected_generation: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[int] = ..., state: _Optional[_Union[NodeState, str]] = ..., last_error: _Optional[str] = ..., hints_pending: _Optional[int] = ..., ring_share: _Optional[float] = ..., membership: _Optional[str] = ..., directory: _Optional[str] = ..., generation: _Optional[int] = ..., expected_generation: _Optional[int] = ...) -> None: ...

class GetTopologyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Topology(_message.Message):
    __slots__ = ("epoch", "replication", "read_quorum", "write_quorum", "nodes", "router_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    READ_QUORUM_FIELD_NUMBER: _ClassVar[int]
    WRITE_QUORUM_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    replication: int
    read_quorum: int
    write_quorum: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    router_id: str
    def __init__(self, epoch: _Optional[int] = ..., replication: _Optional[int] = ..., read_quorum: _Optional[int] = ..., write_quorum: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., router_id: _Optional[str] = ...) -> None: ...

class GetHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterHealth(_message.Message):
    __slots__ = ("healthy", "nodes_up", "nodes_down", "nodes")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    NODES_UP_FIELD_NUMBER: _ClassVar[int]
    NODES_DOWN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    nodes_up: int
    nodes_down: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, healthy: _Optional[bool] = ..., nodes_up: _Optional[int] = ..., nodes_down: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class Move(_message.Message):
    __slots__ = ("id", "kind", "node_id", "address", "state", "from_epoch", "epoch", "keys_total", "keys_moved", "bytes_total", "bytes_moved", "keys_remaining", "bytes_remaining", "started_ms", "finished_ms", "error", "router_id", "keys_dropped")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEYS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KEYS_MOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    KEYS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    BYTES_REMAINING_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: MoveKind
    node_id: str
    address: str
    state: MoveState
    from_epoch: int
    epoch: int
    keys_total: int
    keys_moved: int
    bytes_total: int
    bytes_moved: int
    keys_remaining: int
    bytes_remaining: int
    started_ms: int
    finished_ms: int
    error: str
    router_id: str
    keys_dropped: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[MoveKind, str]] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[MoveState, str]] = ..., from_epoch: _Optional[int] = ..., epoch: _Optional[int] = ..., keys_total: _Optional[int] = ..., keys_moved: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_moved: _Optional[int] = ..., keys_remaining: _Optional[int] = ..., bytes_remaining: _Optional[int] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., error: _Optional[str] = ..., router_id: _Optional[str] = ..., keys_dropped: _Optional[int] = ...) -> None: ...

class AddNodeRequest(_message.Message):
    __slots__ = ("id", "address", "weight")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    weight: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetMovesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMovesResponse(_message.Message):
    __slots__ = ("current", "history")
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    current: Move
    history: _containers.RepeatedCompositeFieldContainer[Move]
    def __init__(self, current: _Optional[_Union[Move, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Move, _Mapping]]] = ...) -> None: ...

class RepairRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRepairRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RepairStatus(_message.Message):
    __slots__ = ("running", "trigger", "phase", "started_ms", "finished_ms", "segments_total", "segments_covered", "segments_differing", "segments_skipped", "records_compared", "records_repaired", "tombstones_purged", "error")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PASS_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_COVERED_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_DIFFERING_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_COMPARED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_REPAIRED_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_PURGED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    running: bool
    trigger: str
    phase: str
    started_ms: int
    finished_ms: int
    segments_total: int
    segments_covered: int
    segments_differing: int
    segments_skipped: int
    records_compared: int
    records_repaired: int
    tombstones_purged: int
    error: str
    def __init__(self, running: _Optional[bool] = ..., trigger: _Optional[str] = ..., phase: _Optional[str] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., segments_total: _Optional[int] = ..., segments_covered: _Optional[int] = ..., segments_differing: _Optional[int] = ..., segments_skipped: _Optional[int] = ..., records_compared: _Optional[int] = ..., records_repaired: _Optional[int] = ..., tombstones_purged: _Optional[int] = ..., error: _Optional[str] = ..., **kwargs) -> None: ...

class Rebuild(_message.Message):
    __slots__ = ("node_id", "state", "phase", "reason", "keys_total", "keys_copied", "bytes_copied", "records_purged", "generation", "started_ms", "finished_ms", "error", "router_id", "sources")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEYS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KEYS_COPIED_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_PURGED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    state: RebuildState
    phase: str
    reason: str
    keys_total: int
    keys_copied: int
    bytes_copied: int
    records_purged: int
    generation: int
    started_ms: int
    finished_ms: int
    error: str
    router_id: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., state: _Optional[_Union[RebuildState, str]] = ..., phase: _Optional[str] = ..., reason: _Optional[str] = ..., keys_total: _Optional[int] = ..., keys_copied: _Optional[int] = ..., bytes_copied: _Optional[int] = ..., records_purged: _Optional[int] = ..., generation: _Optional[int] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., error: _Optional[str] = ..., router_id: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...

class RebuildNodeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetRebuildsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRebuildsResponse(_message.Message):
    __slots__ = ("rebuilds",)
    REBUILDS_FIELD_NUMBER: _ClassVar[int]
    rebuilds: _containers.RepeatedCompositeFieldContainer[Rebuild]
    def __init__(self, rebuilds: _Optional[_Iterable[_Union[Rebuild, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("id", "reachable", "error", "stats")
    ID_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    id: str
    reachable: bool
    error: str
    stats: _replica_pb2.StatsResponse
    def __init__(self, id: _Optional[str] = ..., reachable: _Optional[bool] = ..., error: _Optional[str] = ..., stats: _Optional[_Union[_replica_pb2.StatsResponse, _Mapping]] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("topology", "nodes", "collected_ms", "rebuilds")
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_MS_FIELD_NUMBER: _ClassVar[int]
    REBUILDS_FIELD_NUMBER: _ClassVar[int]
    topology: Topology
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStats]
    collected_ms: int
    rebuilds: _containers.RepeatedCompositeFieldContainer[Rebuild]
    def __init__(self, topology: _Optional[_Union[Topology, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeStats, _Mapping]]] = ..., collected_ms: _Optional[int] = ..., rebuilds: _Optional[_Iterable[_Union[Rebuild, _Mapping]]] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("node_id", "batch_size")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    batch_size: int
    def __init__(self, node_id: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_replica_pb2.Record]
    def __init__(self, records: _Optional[_Iterable[_Union[_replica_pb2.Record, _Mapping]]] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("restored", "failures", "skipped")
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    restored: int
    failures: _containers.RepeatedScalarFieldContainer[str]
    skipped: int
    def __init__(self, restored: _Optional[int] = ..., failures: _Optional[_Iterable[str]] = ..., skipped: _Optional[int] = ...) -> None: ...
