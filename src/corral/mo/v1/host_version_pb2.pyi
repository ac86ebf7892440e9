import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HostComponent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_COMPONENT_UNSPECIFIED: _ClassVar[HostComponent]
    HOST_COMPONENT_OS: _ClassVar[HostComponent]
HOST_COMPONENT_UNSPECIFIED: HostComponent
HOST_COMPONENT_OS: HostComponent

class ComponentOverrideTarget(_message.Message):
    __slots__ = ("pool_name",)
    POOL_NAME_FIELD_NUMBER: _ClassVar[int]
    pool_name: str
    def __init__(self, pool_name: _Optional[str] = ...) -> None: ...

class ComponentVersion(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class SetComponentVersionOverrideRequest(_message.Message):
    __slots__ = ("target", "component", "version", "ttl")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    target: ComponentOverrideTarget
    component: HostComponent
    version: ComponentVersion
    ttl: _duration_pb2.Duration
    def __init__(self, target: _Optional[_Union[ComponentOverrideTarget, _Mapping]] = ..., component: _Optional[_Union[HostComponent, str]] = ..., version: _Optional[_Union[ComponentVersion, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetComponentVersionOverrideResponse(_message.Message):
    __slots__ = ("expires_at",)
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAppliedHostComponentVersionsRequest(_message.Message):
    __slots__ = ("target", "component")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    target: ComponentOverrideTarget
    component: HostComponent
    def __init__(self, target: _Optional[_Union[ComponentOverrideTarget, _Mapping]] = ..., component: _Optional[_Union[HostComponent, str]] = ...) -> None: ...

class NodeComponentVersion(_message.Message):
    __slots__ = ("node", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: ComponentVersion
    def __init__(self, node: _Optional[str] = ..., version: _Optional[_Union[ComponentVersion, _Mapping]] = ...) -> None: ...

class GetAppliedHostComponentVersionsResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeComponentVersion]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeComponentVersion, _Mapping]]] = ...) -> None: ...
