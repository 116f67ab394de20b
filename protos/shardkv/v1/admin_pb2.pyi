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
NODE_STATE_UNKNOWN: NodeState
UP: NodeState
DOWN: NodeState

class NodeStatus(_message.Message):
    __slots__ = ("id", "address", "weight", "state", "last_error", "hints_pending", "ring_share")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    HINTS_PENDING_FIELD_NUMBER: _ClassVar[int]
    RING_SHARE_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    weight: int
    state: NodeState
    last_error: str
    hints_pending: int
    ring_share: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[int] = ..., state: _Optional[_Union[NodeState, str]] = ..., last_error: _Optional[str] = ..., hints_pending: _Optional[int] = ..., ring_share: _Optional[float] = ...) -> None: ...

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
