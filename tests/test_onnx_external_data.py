"""A bundle's graphs may not name files to read tensors from (ONNX external data): onnxruntime would read
them from the current folder, and a crafted bundle could leak a user's files through its predictions.
fastadapt.onnx_wire walks the graph's protobuf bytes itself; these tests build those bytes by hand, so
they run without the onnx package (the runtime-only CI), and once end to end with a real bundle."""

from __future__ import annotations

import time

import pytest

from fastadapt import onnx_wire
from fastadapt.errors import FastadaptError
from fastadapt.onnx_wire import refuse_external_data


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def number(field: int, value: int) -> bytes:  # a varint field
    return varint(field << 3) + varint(value)


def message(field: int, *parts: bytes) -> bytes:  # a length-delimited field holding the parts
    body = b"".join(parts)
    return varint(field << 3 | 2) + varint(len(body)) + body


# onnx.proto field numbers, written out so that a test reads as the structure it builds
def tensor(*parts, field=5):  # GraphProto.initializer by default
    return message(field, message(8, b"w"), number(2, 1), *parts)  # name, data_type FLOAT


def graph(*parts, field=7):  # ModelProto.graph by default
    return message(field, message(2, b"g"), *parts)


EXTERNAL = number(14, 1)  # TensorProto.data_location = EXTERNAL
LOCATION = message(13, message(1, b"location"), message(2, b"secret.txt"))  # TensorProto.external_data
MODEL = number(1, 8)  # ModelProto.ir_version

CRAFTED = {
    "initializer marked external": MODEL + graph(tensor(EXTERNAL, LOCATION)),
    "initializer with only a location": MODEL + graph(tensor(LOCATION)),
    "Constant node's value": MODEL + graph(message(1, message(4, b"Constant"), message(5, tensor(EXTERNAL, field=5)))),
    "If branch's initializer": MODEL + graph(message(1, message(5, graph(tensor(EXTERNAL), field=6)))),
    "sparse initializer's values": MODEL + graph(message(15, tensor(EXTERNAL, field=1))),
    "local function's node": MODEL + message(25, message(7, message(5, tensor(EXTERNAL, field=10)))),
    "training graph": MODEL + message(20, graph(tensor(EXTERNAL), field=1)),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_graphs_naming_files_are_refused(case):
    with pytest.raises(FastadaptError, match=r"^b.fadapt \(forward.onnx\): the graph reads tensors from files"):
        refuse_external_data(CRAFTED[case], "b.fadapt (forward.onnx)")


def test_tensors_held_in_the_graph_pass():
    raw = message(9, bytes(range(256)) * 4)  # raw_data whose bytes look like anything: skipped unread
    refuse_external_data(MODEL + graph(tensor(raw, number(14, 0)), message(1, message(4, b"Relu"))), "ok")
    refuse_external_data(b"", "empty")  # no fields: onnxruntime refuses it, in its own one line


@pytest.mark.parametrize("data", [b"not an onnx graph", bytes(64), MODEL + graph(tensor())[:-3],
                                  MODEL + b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0b\x0c"],
                         ids=["text", "zeros", "truncated", "endless varint", "group"])
def test_malformed_graphs_are_refused_in_one_line(data):
    with pytest.raises(FastadaptError, match=r"^g: not a well-formed ONNX graph.*; re-export the bundle$"):
        refuse_external_data(data, "g")


def test_deeply_nested_subgraphs_are_refused_without_recursing_far():
    nested = tensor(EXTERNAL)
    for _ in range(500):  # graph -> node -> attribute -> graph ...: a recursion bomb, external at the bottom
        nested = message(1, message(5, graph(nested, field=6)))
    start = time.perf_counter()
    with pytest.raises(FastadaptError, match="nested more than 64 deep"):
        refuse_external_data(MODEL + graph(nested), "g")
    assert time.perf_counter() - start < 1.0


def test_the_walk_is_bounded(monkeypatch):
    monkeypatch.setattr(onnx_wire, "_MAX_FIELDS", 100)
    with pytest.raises(FastadaptError, match="more than 100 fields"):
        refuse_external_data(MODEL + graph(*[message(1, message(4, b"Relu"))] * 200), "g")


def test_a_crafted_bundle_cannot_read_files_through_predict(bundles, glyphs, tmp_path, capsys, monkeypatch):
    """The reviewer's attack, end to end: an adapted bundle's forward graph gains an initializer read from
    ./secret.txt, with every checksum recomputed; load, info, adapt and predict all refuse it in one line."""
    onnx = pytest.importorskip("onnx")
    from test_bundle_hardening import craft, members_of
    from test_cli_runtime import run_cli

    import fastadapt

    adapted = str(tmp_path / "adapted.fadapt")
    fastadapt.load(bundles["prototype"]).adapt(glyphs["shots"]).save(adapted)
    graph_proto = onnx.load_from_string(members_of(adapted)["forward.onnx"])
    leak = onnx.TensorProto(name="leak", data_type=onnx.TensorProto.UINT8, dims=[8])
    leak.data_location = onnx.TensorProto.EXTERNAL
    leak.external_data.add(key="location", value="secret.txt")
    graph_proto.graph.initializer.append(leak)
    path = craft(adapted, tmp_path / "leak.fadapt", forward_onnx=graph_proto.SerializeToString())
    (tmp_path / "secret.txt").write_bytes(b"ABCDEFGH")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # the adaptation's own messages

    with pytest.raises(FastadaptError, match="reads tensors from files outside the bundle"):
        fastadapt.load(path)
    for args in (["info", path], ["predict", "--model", path, glyphs["queries"]],
                 ["adapt", "--model", path, "--shots", glyphs["shots"], "--out", "again.fadapt"]):
        code, out, err = run_cli(capsys, *args)
        assert code != 0 and "Traceback" not in err and "external data" in err, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and "ABCDEFGH" not in out + err, err
    assert not (tmp_path / "again.fadapt").exists()
