# ruff: noqa
# mypy: disable-error-code="type-arg"
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("node", "version", "gadgets")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GADGETS_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    gadgets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ..., gadgets: _Optional[_Iterable[str]] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("argv", "stop", "outputs", "columns")
    ARGV_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    stop: bool
    outputs: _containers.RepeatedScalarFieldContainer[str]
    columns: str
    def __init__(self, argv: _Optional[_Iterable[str]] = ..., stop: _Optional[bool] = ..., outputs: _Optional[_Iterable[str]] = ..., columns: _Optional[str] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("node", "what", "gadget", "table", "sql")
    NODE_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    GADGET_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    node: str
    what: str
    gadget: str
    table: _containers.RepeatedCompositeFieldContainer[TableField]
    sql: _containers.RepeatedCompositeFieldContainer[SqlColumn]
    def __init__(self, node: _Optional[str] = ..., what: _Optional[str] = ..., gadget: _Optional[str] = ..., table: _Optional[_Iterable[_Union[TableField, _Mapping]]] = ..., sql: _Optional[_Iterable[_Union[SqlColumn, _Mapping]]] = ...) -> None: ...

class TableField(_message.Message):
    __slots__ = ("name", "header", "width", "right")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    header: str
    width: int
    right: bool
    def __init__(self, name: _Optional[str] = ..., header: _Optional[str] = ..., width: _Optional[int] = ..., right: _Optional[bool] = ...) -> None: ...

class SqlColumn(_message.Message):
    __slots__ = ("name", "type", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    doc: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., doc: _Optional[str] = ...) -> None: ...

class Records(_message.Message):
    __slots__ = ("first_seq", "count", "lines", "times", "watermark", "table", "rows")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    count: int
    lines: bytes
    times: bytes
    watermark: int
    table: bytes
    rows: bytes
    def __init__(self, first_seq: _Optional[int] = ..., count: _Optional[int] = ..., lines: _Optional[bytes] = ..., times: _Optional[bytes] = ..., watermark: _Optional[int] = ..., table: _Optional[bytes] = ..., rows: _Optional[bytes] = ...) -> None: ...

class Interface(_message.Message):
    __slots__ = ("id", "name", "description", "snaplen", "linktype", "filter", "start_ns", "end_ns", "closed", "received", "dropped")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SNAPLEN_FIELD_NUMBER: _ClassVar[int]
    LINKTYPE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    description: str
    snaplen: int
    linktype: int
    filter: str
    start_ns: int
    end_ns: int
    closed: bool
    received: int
    dropped: int
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., snaplen: _Optional[int] = ..., linktype: _Optional[int] = ..., filter: _Optional[str] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., closed: _Optional[bool] = ..., received: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class Frames(_message.Message):
    __slots__ = ("first_seq", "count", "blocks", "times", "interfaces", "watermark", "tls_keys")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    TLS_KEYS_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    count: int
    blocks: bytes
    times: bytes
    interfaces: _containers.RepeatedCompositeFieldContainer[Interface]
    watermark: int
    tls_keys: bytes
    def __init__(self, first_seq: _Optional[int] = ..., count: _Optional[int] = ..., blocks: _Optional[bytes] = ..., times: _Optional[bytes] = ..., interfaces: _Optional[_Iterable[_Union[Interface, _Mapping]]] = ..., watermark: _Optional[int] = ..., tls_keys: _Optional[bytes] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...

class Loss(_message.Message):
    __slots__ = ("key", "cause", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    cause: str
    count: int
    def __init__(self, key: _Optional[str] = ..., cause: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("records", "lost", "losses", "line", "stopped_by", "failure", "pending", "interfaces", "bad_input")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    BAD_INPUT_FIELD_NUMBER: _ClassVar[int]
    records: int
    lost: int
    losses: _containers.RepeatedCompositeFieldContainer[Loss]
    line: str
    stopped_by: str
    failure: str
    pending: int
    interfaces: _containers.RepeatedCompositeFieldContainer[Interface]
    bad_input: bool
    def __init__(self, records: _Optional[int] = ..., lost: _Optional[int] = ..., losses: _Optional[_Iterable[_Union[Loss, _Mapping]]] = ..., line: _Optional[str] = ..., stopped_by: _Optional[str] = ..., failure: _Optional[str] = ..., pending: _Optional[int] = ..., interfaces: _Optional[_Iterable[_Union[Interface, _Mapping]]] = ..., bad_input: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("watermark",)
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    watermark: int
    def __init__(self, watermark: _Optional[int] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("started", "records", "frames", "notice", "summary", "heartbeat")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    started: Started
    records: Records
    frames: Frames
    notice: Notice
    summary: Summary
    heartbeat: Heartbeat
    def __init__(self, started: _Optional[_Union[Started, _Mapping]] = ..., records: _Optional[_Union[Records, _Mapping]] = ..., frames: _Optional[_Union[Frames, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...
