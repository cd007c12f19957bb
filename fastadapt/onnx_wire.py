"""Refuse ONNX graphs whose tensors name files to read ("external data"); the IR version graphs are written with.

An ONNX tensor may say "my values are in file X". onnxruntime honours that even for a graph handed to it
as bytes, reading X relative to the current folder, so a crafted bundle could read any of the user's
files there and leak their bytes through its predictions (the bundle's checksums do not help: a crafter
recomputes them). fastadapt never writes external data, so a bundle graph that has any is refused.

The runtime has no ``onnx`` package, so this walks protobuf's wire format itself, over the few message
types of onnx.proto on the paths that can hold a tensor (field numbers from onnx.proto3).
"""
from __future__ import annotations

from .errors import FastadaptError

# message -> {field number: message type it holds}; every other field is skipped unread.
_HOLDS = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto: graph, training_info, functions
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto: initialization, algorithm
    "function": {7: "node", 11: "attribute"},  # FunctionProto: node, attribute_proto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto: node, initializer, sparse_initializer
    "node": {5: "attribute"},  # NodeProto: attribute
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},  # t g tensors graphs
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto: values, indices
}
_EXTERNAL_DATA, _DATA_LOCATION = 13, 14  # TensorProto: the file's key/values; 1 = EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies); ours have none
_MAX_FIELDS = 1_000_000  # the shipped step graph has ~11,000: a bound on the walk's time (~2 s), not a size
_IR_VERSION_FIELD = 1  # ModelProto.ir_version

# The ONNX IR version of every graph fastadapt writes. The exporters stamp the newest they know (10 with onnx
# 1.16+), which onnxruntime 1.17, the oldest the package accepts, refuses; the graphs are opset 20 and use
# nothing that IR 10 added (4-bit types, ...), so IR 9 states them exactly and every onnxruntime >= 1.17 reads them.
IR_VERSION = 9


def stamp_ir_version(model) -> None:
    """Give an onnx ModelProto the IR version fastadapt writes (never a newer one than it had)."""
    model.ir_version = min(int(model.ir_version), IR_VERSION)


def ir_version(onnx_bytes: bytes) -> int | None:
    """The IR version a serialised ONNX model states, None if it states none or cannot be read."""
    try:
        for field, wire, value in _fields(onnx_bytes, 0, len(onnx_bytes)):
            if field == _IR_VERSION_FIELD and wire == 0:
                return value
    except (_Malformed, IndexError):
        return None
    return None


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int, end: int) -> tuple:
    value = shift = 0
    for _ in range(10):
        if pos >= end:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Malformed


def _fields(data: bytes, pos: int, end: int):
    """(field number, wire type, value) of each field of the message in data[pos:end]: the value is an int
    for varints, the (start, end) of its bytes for length-delimited fields, None for fixed-size ones.
    Offsets into one buffer, not slices: a step graph has ~10,000 fields."""
    while pos < end:
        key, pos = (data[pos], pos + 1) if data[pos] < 0x80 else _varint(data, pos, end)  # one byte: most keys
        field, wire = key >> 3, key & 7
        if field == 0:  # never valid in protobuf (and what a run of zero bytes reads as)
            raise _Malformed
        if wire == 0:
            value, pos = _varint(data, pos, end)
        elif wire == 2:
            length, pos = (data[pos], pos + 1) if pos < end and data[pos] < 0x80 else _varint(data, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:  # groups (3, 4) are not in onnx.proto; 6 and 7 do not exist
            raise _Malformed
        if pos > end:
            raise _Malformed
        yield field, wire, value


def _names_a_file(data: bytes, pos: int, end: int, kind: str, depth: int, seen: list) -> bool:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested more than {_MAX_DEPTH} deep")
    holds = _HOLDS.get(kind, {})
    for field, wire, value in _fields(data, pos, end):
        seen[0] += 1
        if seen[0] > _MAX_FIELDS:
            raise _Malformed(f"more than {_MAX_FIELDS:,} fields")
        if kind == "tensor" and (field == _EXTERNAL_DATA or (field == _DATA_LOCATION and value != 0)):
            return True
        held = holds.get(field)
        if held and wire == 2 and _names_a_file(data, *value, held, depth + 1, seen):
            return True
    return False


def refuse_external_data(onnx_bytes: bytes, where: str) -> None:
    """Raise a one-line FastadaptError if the graph ``onnx_bytes`` reads tensors from files, or cannot be
    walked as an ONNX model; ``where`` names the graph (bundle and member) in the message."""
    try:
        external = _names_a_file(onnx_bytes, 0, len(onnx_bytes), "model", 0, [0])
    except _Malformed as exc:
        why = f" ({exc})" if str(exc) else ""
        raise FastadaptError(f"{where}: not a well-formed ONNX graph{why}; re-export the bundle") from None
    if external:
        raise FastadaptError(f"{where}: the graph reads tensors from files outside the bundle (ONNX external "
                             f"data), which fastadapt never writes; refused as crafted, re-export the bundle")
