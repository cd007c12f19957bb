"""Bundle integrity: any edited member, the manifest included, is caught on load."""

import json
import zipfile

import pytest

from fastadapt.bundle import read_bundle
from fastadapt.errors import FastadaptError


def _copy_with(src, dst, name, data):
    with zipfile.ZipFile(src) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members[name] = data
    with zipfile.ZipFile(dst, "w") as archive:
        for n, d in members.items():
            archive.writestr(n, d)


def test_edited_manifest_is_rejected(bundles, tmp_path):
    with zipfile.ZipFile(bundles["zero"]) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    manifest["inner_loop"]["lr"] = 10.0
    path = tmp_path / "edited.fadapt"
    _copy_with(bundles["zero"], path, "manifest.json", json.dumps(manifest).encode())
    with pytest.raises(FastadaptError, match="checksum mismatch in manifest.json"):
        read_bundle(str(path))


def test_edited_member_is_rejected(bundles, tmp_path):
    with zipfile.ZipFile(bundles["zero"]) as archive:
        step = bytearray(archive.read("step.onnx"))
    step[len(step) // 2] ^= 0xFF
    path = tmp_path / "edited.fadapt"
    _copy_with(bundles["zero"], path, "step.onnx", bytes(step))
    with pytest.raises(FastadaptError, match="checksum mismatch in step.onnx"):
        read_bundle(str(path))
    assert read_bundle(bundles["zero"]).manifest["format_version"] == 1


def test_write_atomic_to_a_folder_is_a_user_error(tmp_path):
    from fastadapt.bundle import write_atomic

    with pytest.raises(FastadaptError, match="is a folder"):
        write_atomic(str(tmp_path), b"data")
    assert list(tmp_path.iterdir()) == []
