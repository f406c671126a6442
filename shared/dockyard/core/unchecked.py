"""Converting a stored value to its type as msgspec does, but without the type's constraints.

Events are never rewritten, yet the rules for what may be stored get stricter (a pattern that
let a trailing newline through, say). A row stored under the old rule must still be read:
its job's history, its view, the relay that sets it aside. Types are still checked; only
the constraints (patterns, lengths, bounds) are not. New input is checked at the edge, where
the strict types are used, never through this.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import msgspec.inspect as mi

_PLAIN: dict[type[mi.Type], type] = {
    mi.StrType: str,
    mi.IntType: int,
    mi.FloatType: float,
    mi.BoolType: bool,
    mi.DateTimeType: datetime,
}


def convert_unchecked(value: Any, to: Any) -> Any:
    """`msgspec.convert(value, to)` with no constraint checked; ValidationError on a wrong
    type or a missing field, as convert raises."""
    return _convert(value, mi.type_info(to))


def _convert(value: Any, info: mi.Type) -> Any:
    if isinstance(info, mi.Metadata):
        return _convert(value, info.type)
    if type(info) in _PLAIN:
        return msgspec.convert(value, _PLAIN[type(info)])
    if isinstance(info, mi.StructType):
        return _struct(value, info)
    if isinstance(info, mi.UnionType):
        return _union(value, info)
    if isinstance(info, mi.DictType):
        mapping = msgspec.convert(value, dict)
        return {
            _convert(k, info.key_type): _convert(v, info.value_type) for k, v in mapping.items()
        }
    if isinstance(info, mi.ListType | mi.VarTupleType):
        items = [_convert(v, info.item_type) for v in msgspec.convert(value, list)]
        return items if isinstance(info, mi.ListType) else tuple(items)
    if isinstance(info, mi.LiteralType):
        if value not in info.values:
            raise msgspec.ValidationError(f"Expected one of {info.values!r}, got {value!r}")
        return value
    if isinstance(info, mi.NoneType):
        return msgspec.convert(value, type(None))
    if isinstance(info, mi.AnyType):
        return value
    raise TypeError(f"no unchecked conversion to {info!r}")  # a type the events do not use


def _struct(value: Any, info: mi.StructType) -> Any:
    fields = msgspec.convert(value, dict)
    kwargs = {}
    for field in info.fields:
        if field.encode_name in fields:
            kwargs[field.name] = _convert(fields[field.encode_name], field.type)
        elif field.required:
            raise msgspec.ValidationError(f"Object missing required field `{field.encode_name}`")
    return info.cls(**kwargs)


def _union(value: Any, info: mi.UnionType) -> Any:
    if value is None and any(isinstance(t, mi.NoneType) for t in info.types):
        return None
    tagged = [t for t in info.types if isinstance(t, mi.StructType) and t.tag_field is not None]
    if tagged and isinstance(value, dict):
        for struct in tagged:
            if value.get(struct.tag_field) == struct.tag:
                return _struct(value, struct)
        raise msgspec.ValidationError(f"Invalid value {value.get(tagged[0].tag_field)!r}")
    for each in info.types:
        if isinstance(each, mi.NoneType):
            continue
        try:
            return _convert(value, each)
        except msgspec.ValidationError:
            continue
    raise msgspec.ValidationError(f"Expected one of {info.types!r}")
