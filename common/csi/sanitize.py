"""Secret stripping: render a CSI message for a log line with every secret blanked, by schema.

Like csi-lib-utils `protosanitizer`: a field is secret when its descriptor carries the
`(csi.v1.csi_secret) = true` option, wherever it sits (nested messages, repeated fields, map values,
oneof members). There is no list of field names, so a field added to the spec with the option is
stripped without touching this code. A secret field that is set renders as `"***stripped***"`.

The output is compact JSON with the proto field names and sorted keys, e.g.
`{"name":"pvc-1","parameters":{"tier":"gold"},"secrets":"***stripped***"}`.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from proto import csi_pb2

STRIPPED = "***stripped***"

_CSI_SECRET: Any = csi_pb2.csi_secret  # the FieldOptions extension (csi.v1.csi_secret = 1059)


@functools.cache
def _is_secret(field: FieldDescriptor) -> bool:
    options = field.GetOptions()
    return bool(options.HasExtension(_CSI_SECRET) and options.Extensions[_CSI_SECRET])


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _render(value)
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def _render(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if _is_secret(field):
            out[field.name] = STRIPPED
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            mapping: Mapping[Any, Any] = value
            out[field.name] = {str(k): _scalar(value_field, v) for k, v in mapping.items()}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        else:
            out[field.name] = _scalar(field, value)
    return out


def strip_secrets(msg: Message | None) -> str:
    """`msg` as compact JSON with every `csi_secret` field replaced by "***stripped***"."""
    if msg is None:
        return "null"
    return json.dumps(_render(msg), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def truncate(text: str, max_len: int) -> str:
    """Cap a logged response at `max_len` characters (`--max-grpc-log-length`; <= 0: unlimited)."""
    if max_len <= 0 or len(text) <= max_len:
        return text
    return text[:max_len] + f" [response body too large, log capped to {max_len} chars]"
