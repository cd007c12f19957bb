"""The oldest dependencies the package accepts can run what it ships and writes, and onnxruntime is
imported with its telemetry off.

CI's Python 3.10 runtime pass installs .ci/minimum-versions.txt (pyproject's floors) and runs this file with
the other runtime tests, so there the built-in models really load in onnxruntime 1.17.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from fastadapt.errors import FastadaptError
from fastadapt.onnx_wire import IR_VERSION, ir_version
from fastadapt.runtime.loading import BUILT_IN, model_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _floors() -> dict:
    """{package: floor} of pyproject.toml's runtime dependencies (``name>=x.y``)."""
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    return {name.lower(): floor for name, floor in re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', block)}


def _pins() -> dict:
    lines = open(os.path.join(ROOT, ".ci", "minimum-versions.txt"), encoding="utf-8").read().splitlines()
    return dict(line.split("==") for line in (x.strip() for x in lines) if line and not line.startswith("#"))


def test_minimum_versions_are_pyprojects_floors():
    floors, pins = _floors(), _pins()
    assert set(pins) == set(floors)
    for name, floor in floors.items():  # a pin is the floor, or a patch release of it
        assert pins[name] == floor or pins[name].startswith(floor + "."), (name, floor, pins[name])


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_graphs_state_the_ir_version_fastadapt_writes(name):
    with zipfile.ZipFile(model_path(name)) as archive:
        for member in ("forward.onnx", "step.onnx"):
            assert ir_version(archive.read(member)) == IR_VERSION, member


def test_a_too_new_graph_names_onnxruntime_not_the_bundle(monkeypatch):
    """onnxruntime older than the exporter refuses a graph by its IR version: the advice is to upgrade."""
    import onnxruntime

    from fastadapt.runtime.sessions import make_session

    with zipfile.ZipFile(model_path("characters")) as archive:
        graph = bytearray(archive.read("forward.onnx"))
    assert graph[:2] == bytes([0x08, IR_VERSION])  # field 1 (ir_version), a one-byte varint
    graph[1] = IR_VERSION + 1

    def refuse(*args, **kwargs):  # what onnxruntime 1.17 says of an IR 10 graph
        raise RuntimeError(f"Failed to load model: Unsupported model IR version: {IR_VERSION + 1}, "
                           f"max supported IR version: {IR_VERSION}")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(FastadaptError) as caught:
        make_session(bytes(graph), "m.fadapt (forward.onnx)")
    message = str(caught.value)
    assert f"ONNX IR version {IR_VERSION + 1}" in message and "upgrade onnxruntime" in message
    assert "\n" not in message


def test_ir_version_of_something_unreadable_is_none():
    assert ir_version(b"") is None and ir_version(b"\xff\xff\xff") is None


def test_ir_version_reads_only_a_varint_field_1():
    # guards against taking any field 1 as the version: a length-delimited field 1 (wire type 2) holds bytes,
    # not a version. Keys are (field << 3) | wire: 0x08 = field 1 varint, 0x0A = field 1 bytes, 0x12 = field 2
    assert ir_version(bytes([0x08, 0x07])) == 7
    assert ir_version(bytes([0x12, 0x01, 0x00, 0x08, 0x09])) == 9  # after another field
    assert ir_version(bytes([0x08, 0x96, 0x01])) == 150  # a two-byte varint
    assert ir_version(bytes([0x0A, 0x01, 0x05])) is None


def test_stamping_lowers_a_newer_ir_version_and_keeps_an_older_one():
    # guards against raising an older graph's IR version to IR_VERSION: it would claim features it may lack
    from types import SimpleNamespace

    from fastadapt.onnx_wire import stamp_ir_version

    for before, after in ((IR_VERSION + 1, IR_VERSION), (IR_VERSION, IR_VERSION), (IR_VERSION - 2, IR_VERSION - 2)):
        model = SimpleNamespace(ir_version=before)
        stamp_ir_version(model)
        assert model.ir_version == after


_PROBE = """
import json, os, fastadapt
model = fastadapt.load()
adapted = model.adapt({"a": [os.environ["A"]], "b": [os.environ["B"]]}, steps=1)
print(json.dumps({"setting": os.environ.get("ORT_DISABLE_TELEMETRY")}))
"""


def _run_probe(home, **env) -> dict:
    examples = os.path.join(ROOT, "examples", "shots")
    environment = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    environment.update(HOME=str(home), A=os.path.join(examples, "star", os.listdir(os.path.join(examples, "star"))[0]),
                       B=os.path.join(examples, "circle", os.listdir(os.path.join(examples, "circle"))[0]), **env)
    done = subprocess.run([sys.executable, "-c", _PROBE], env=environment, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_onnxruntime_telemetry_is_off_unless_the_program_chose(tmp_path):
    """Official onnxruntime builds keep a device id under ~/.cache and send usage events unless
    ORT_DISABLE_TELEMETRY=1 is set before they start: fastadapt sets it, leaving a program's own choice be."""
    home = tmp_path / "home"
    home.mkdir()
    assert _run_probe(home) == {"setting": "1"}
    left = [os.path.relpath(os.path.join(d, f), home) for d, _, files in os.walk(home) for f in files]
    assert left == []  # no device id, no telemetry database
    assert _run_probe(tmp_path, ORT_DISABLE_TELEMETRY="0") == {"setting": "0"}


def test_exported_and_standalone_graphs_state_the_ir_version_fastadapt_writes(bundles, glyphs, tmp_path):
    """What the exporters write (torch's stamps IR 10 with onnx 1.16+) is restated at IR_VERSION."""
    pytest.importorskip("onnx")
    import fastadapt

    with zipfile.ZipFile(bundles["prototype"]) as archive:
        for member in ("forward.onnx", "step.onnx"):
            assert ir_version(archive.read(member)) == IR_VERSION, member
    adapted = fastadapt.load(bundles["prototype"]).adapt(glyphs["shots"], steps=1)
    adapted.export_onnx(str(tmp_path / "m.onnx"))
    assert ir_version((tmp_path / "m.onnx").read_bytes()) == IR_VERSION
