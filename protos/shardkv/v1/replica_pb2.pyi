from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Record(_message.Message):
    __slots__ = ("key", "value", "version", "writer", "tombstone", "restore")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    version: int
    writer: int
    tombstone: bool
    restore: bool
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., writer: _Optional[int] = ..., tombstone: _Optional[bool] = ..., restore: _Optional[bool] = ...) -> None: ...

class Hint(_message.Message):
    __slots__ = ("target", "record")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    target: str
    record: Record
    def __init__(self, target: _Optional[str] = ..., record: _Optional[_Union[Record, _Mapping]] = ...) -> None: ...

class Marker(_message.Message):
    __slots__ = ("key", "target")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    target: str
    def __init__(self, key: _Optional[bytes] = ..., target: _Optional[str] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("records", "hints", "markers", "columns")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    MARKERS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    hints: _containers.RepeatedCompositeFieldContainer[Hint]
    markers: _containers.RepeatedCompositeFieldContainer[Marker]
    columns: _containers.RepeatedCompositeFieldContainer[RecordColumns]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., hints: _Optional[_Iterable[_Union[Hint, _Mapping]]] = ..., markers: _Optional[_Iterable[_Union[Marker, _Mapping]]] = ..., columns: _Optional[_Iterable[_Union[RecordColumns, _Mapping]]] = ...) -> None: ...

class RecordColumns(_message.Message):
    __slots__ = ("keys", "key_ends", "values", "value_ends", "versions", "writer", "tombstones")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    KEY_ENDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VALUE_ENDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    keys: bytes
    key_ends: bytes
    values: bytes
    value_ends: bytes
    versions: bytes
    writer: int
    tombstones: bytes
    def __init__(self, keys: _Optional[bytes] = ..., key_ends: _Optional[bytes] = ..., values: _Optional[bytes] = ..., value_ends: _Optional[bytes] = ..., versions: _Optional[bytes] = ..., writer: _Optional[int] = ..., tombstones: _Optional[bytes] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("applied", "possibly_deleted")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    POSSIBLY_DELETED_FIELD_NUMBER: _ClassVar[int]
    applied: _containers.RepeatedScalarFieldContainer[bool]
    possibly_deleted: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, applied: _Optional[_Iterable[bool]] = ..., possibly_deleted: _Optional[_Iterable[int]] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("keys", "max_bytes", "answers")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    max_bytes: int
    answers: bool
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., max_bytes: _Optional[int] = ..., answers: _Optional[bool] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("records", "resume_at", "answers")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    resume_at: int
    answers: ReadAnswers
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., resume_at: _Optional[int] = ..., answers: _Optional[_Union[ReadAnswers, _Mapping]] = ...) -> None: ...

class ReadAnswers(_message.Message):
    __slots__ = ("entries", "bounds", "versions", "writers")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WRITERS_FIELD_NUMBER: _ClassVar[int]
    entries: bytes
    bounds: bytes
    versions: bytes
    writers: bytes
    def __init__(self, entries: _Optional[bytes] = ..., bounds: _Optional[bytes] = ..., versions: _Optional[bytes] = ..., writers: _Optional[bytes] = ...) -> None: ...

class ScanRecordsRequest(_message.Message):
    __slots__ = ("start", "end", "limit")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    limit: int
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., limit: _Optional[int] = ...) -> None: ...

class ScanRecordsResponse(_message.Message):
    __slots__ = ("records", "next_start")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    next_start: bytes
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., next_start: _Optional[bytes] = ...) -> None: ...

class StreamRangeRequest(_message.Message):
    __slots__ = ("start", "end", "batch_size")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    batch_size: int
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., batch_size: _Optional[int] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class DigestRequest(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ...) -> None: ...

class DigestResponse(_message.Message):
    __slots__ = ("digest", "count")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    count: int
    def __init__(self, digest: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class HintSummaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HintCount(_message.Message):
    __slots__ = ("target", "count")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    target: str
    count: int
    def __init__(self, target: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class HintSummaryResponse(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[HintCount]
    def __init__(self, targets: _Optional[_Iterable[_Union[HintCount, _Mapping]]] = ...) -> None: ...

class ReadHintsRequest(_message.Message):
    __slots__ = ("target", "limit")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    target: str
    limit: int
    def __init__(self, target: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ReadHintsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class DeleteHintsRequest(_message.Message):
    __slots__ = ("target", "records")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    target: str
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, target: _Optional[str] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class DeleteHintsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class TokenRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class TokenDigestsRequest(_message.Message):
    __slots__ = ("ranges", "count_only", "max_records_per_second")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    COUNT_ONLY_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    count_only: bool
    max_records_per_second: int
    def __init__(self, ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ..., count_only: _Optional[bool] = ..., max_records_per_second: _Optional[int] = ...) -> None: ...

class TokenDigest(_message.Message):
    __slots__ = ("digest", "count", "bytes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    count: int
    bytes: int
    def __init__(self, digest: _Optional[bytes] = ..., count: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class TokenDigestsResponse(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedCompositeFieldContainer[TokenDigest]
    def __init__(self, digests: _Optional[_Iterable[_Union[TokenDigest, _Mapping]]] = ...) -> None: ...

class StreamTokenRangesRequest(_message.Message):
    __slots__ = ("ranges", "batch_size", "keys_only", "max_records_per_second")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    KEYS_ONLY_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    batch_size: int
    keys_only: bool
    max_records_per_second: int
    def __init__(self, ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ..., batch_size: _Optional[int] = ..., keys_only: _Optional[bool] = ..., max_records_per_second: _Optional[int] = ...) -> None: ...

class PurgeTokenRangesRequest(_message.Message):
    __slots__ = ("ranges", "tombstones_before", "all_records")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ALL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    tombstones_before: int
    all_records: bool
    def __init__(self, ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ..., tombstones_before: _Optional[int] = ..., all_records: _Optional[bool] = ...) -> None: ...

class PurgeTokenRangesResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class FenceRequest(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class FenceResponse(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("node_id", "records", "hints", "used_bytes", "map_size_bytes", "max_map_size_bytes", "keys_read", "records_written", "uptime_seconds", "purge_watermark")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAP_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEYS_READ_FIELD_NUMBER: _ClassVar[int]
    RECORDS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PURGE_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    records: int
    hints: int
    used_bytes: int
    map_size_bytes: int
    max_map_size_bytes: int
    keys_read: int
    records_written: int
    uptime_seconds: float
    purge_watermark: int
    def __init__(self, node_id: _Optional[str] = ..., records: _Optional[int] = ..., hints: _Optional[int] = ..., used_bytes: _Optional[int] = ..., map_size_bytes: _Optional[int] = ..., max_map_size_bytes: _Optional[int] = ..., keys_read: _Optional[int] = ..., records_written: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., purge_watermark: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("batch_size",)
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    def __init__(self, batch_size: _Optional[int] = ...) -> None: ...

class SnapshotBatch(_message.Message):
    __slots__ = ("records", "hint_target")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HINT_TARGET_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    hint_target: str
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., hint_target: _Optional[str] = ...) -> None: ...

class IdentityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DirectoryIdentity(_message.Message):
    __slots__ = ("node_id", "cluster_id", "generation", "claimed", "boot", "advanced_boot", "rebuild_by", "rebuild_idle_ms", "fence_epoch", "exchange_port")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    ADVANCED_BOOT_FIELD_NUMBER: _ClassVar[int]
    REBUILD_BY_FIELD_NUMBER: _ClassVar[int]
    REBUILD_IDLE_MS_FIELD_NUMBER: _ClassVar[int]
    FENCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_PORT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster_id: str
    generation: int
    claimed: bool
    boot: str
    advanced_boot: str
    rebuild_by: str
    rebuild_idle_ms: int
    fence_epoch: int
    exchange_port: int
    def __init__(self, node_id: _Optional[str] = ..., cluster_id: _Optional[str] = ..., generation: _Optional[int] = ..., claimed: _Optional[bool] = ..., boot: _Optional[str] = ..., advanced_boot: _Optional[str] = ..., rebuild_by: _Optional[str] = ..., rebuild_idle_ms: _Optional[int] = ..., fence_epoch: _Optional[int] = ..., exchange_port: _Optional[int] = ...) -> None: ...

class SetIdentityRequest(_message.Message):
    __slots__ = ("expect_generation", "expect_claimed", "expect_cluster_id", "cluster_id", "generation", "advance_boot", "rebuild_by")
    EXPECT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    EXPECT_CLAIMED_FIELD_NUMBER: _ClassVar[int]
    EXPECT_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_BOOT_FIELD_NUMBER: _ClassVar[int]
    REBUILD_BY_FIELD_NUMBER: _ClassVar[int]
    expect_generation: int
    expect_claimed: bool
    expect_cluster_id: str
    cluster_id: str
    generation: int
    advance_boot: bool
    rebuild_by: str
    def __init__(self, expect_generation: _Optional[int] = ..., expect_claimed: _Optional[bool] = ..., expect_cluster_id: _Optional[str] = ..., cluster_id: _Optional[str] = ..., generation: _Optional[int] = ..., advance_boot: _Optional[bool] = ..., rebuild_by: _Optional[str] = ...) -> None: ...

class RebuildLeaseRequest(_message.Message):
    __slots__ = ("router_id", "release")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    release: bool
    def __init__(self, router_id: _Optional[str] = ..., release: _Optional[bool] = ...) -> None: ...
