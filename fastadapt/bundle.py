"""The ``.fadapt`` bundle: one zip file, a JSON manifest, two ONNX graphs and .npz parameters. No pickle.

Members
  manifest.json  see below
  forward.onnx   inputs:  "images" float32 (B, C, H, W), then one input per parameter, named exactly
                          as in manifest["parameters"] (head.weight has a dynamic number of rows)
                 outputs: "logits" float32 (B, N), "features" float32 (B, D)
  step.onnx      one complete SGD step (forward, loss, backward, update) on the adapted parameters
                 inputs:  "images" float32 (B, C, H, W), "labels" int64 (B,), "lr" float32 scalar,
                          then every parameter as in forward.onnx
                 outputs: "loss" float32 scalar, then "new.<name>" for each name in
                          manifest["inner_loop"]["adapted"]
  params.npz     the parameters (allow_pickle=False): meta-initialisation, or adapted weights with
                 the head filled in (kind "adapted")
  manifest.sha256  hex SHA-256 of manifest.json (the manifest holds the SHA-256 of the other members)

Manifest keys
  format ("fastadapt-bundle"), format_version, kind ("meta" | "adapted"), architecture,
  preprocess (images.Preprocess.to_dict), parameters (ordered names), inner_loop (steps, lr, adapt,
  loss, head_init, adapted), classes (adapted bundles: label names in head-row order), provenance,
  evaluation (list of results), members ({name: sha256}).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import FastadaptError
from .outputs import write_atomic  # noqa: F401  (re-exported: older imports use fastadapt.bundle.write_atomic)

FORMAT = "fastadapt-bundle"
FORMAT_VERSION = 1
MEMBERS = ("forward.onnx", "step.onnx", "params.npz")
MANIFEST_CHECKSUM = "manifest.sha256"  # SHA-256 of manifest.json, so an edited manifest is caught too


@dataclass
class Bundle:
    manifest: dict
    forward_onnx: bytes
    step_onnx: bytes
    params: dict  # name -> np.ndarray (float32)
    path: str | None = None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def params_to_bytes(params: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()})
    return buffer.getvalue()


def params_from_bytes(data: bytes, where: str) -> dict:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise FastadaptError(f"{where}: params.npz is corrupt ({exc}); re-export the bundle") from None


def save_bundle(path: str, bundle: Bundle) -> None:
    members = {"forward.onnx": bundle.forward_onnx, "step.onnx": bundle.step_onnx,
               "params.npz": params_to_bytes(bundle.params)}
    manifest = dict(bundle.manifest)
    manifest["format"], manifest["format_version"] = FORMAT, FORMAT_VERSION
    manifest["parameters"] = list(bundle.params)
    manifest["members"] = {name: sha256(data) for name, data in members.items()}
    buffer = io.BytesIO()
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=False).encode()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", manifest_bytes)
        archive.writestr(MANIFEST_CHECKSUM, sha256(manifest_bytes))
        for name, data in members.items():
            archive.writestr(name, data)
    write_atomic(path, buffer.getvalue())
    bundle.manifest = manifest


def read_bundle(path: str) -> Bundle:
    """Read and verify a bundle: format, version and the SHA-256 of every member."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FastadaptError(f"{path}: no such model file; pass a .fadapt bundle made by 'fastadapt export' or 'fastadapt adapt'")
    if os.path.isdir(path):
        raise FastadaptError(f"{path}: is a folder, not a .fadapt bundle (for a training run, use 'fastadapt export {path}')")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "manifest.json" not in names:
                raise FastadaptError(f"{path}: not a fastadapt bundle (no manifest.json)")
            manifest_bytes = archive.read("manifest.json")
            if MANIFEST_CHECKSUM not in names or archive.read(MANIFEST_CHECKSUM).decode().strip() != sha256(manifest_bytes):
                raise FastadaptError(f"{path}: checksum mismatch in manifest.json; the bundle is corrupt or was "
                                     f"modified, re-export or re-download it")
            manifest = json.loads(manifest_bytes)
            if manifest.get("format") != FORMAT:
                raise FastadaptError(f"{path}: not a fastadapt bundle (format '{manifest.get('format')}')")
            version = manifest.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise FastadaptError(f"{path}: bundle format version {version} is newer than this fastadapt "
                                     f"reads ({FORMAT_VERSION}); upgrade with 'pip install -U fastadapt'")
            data = {}
            for name in MEMBERS:
                if name not in names:
                    raise FastadaptError(f"{path}: member {name} is missing; the bundle is truncated, re-export it")
                data[name] = archive.read(name)
                expected = manifest.get("members", {}).get(name)
                if sha256(data[name]) != expected:
                    raise FastadaptError(f"{path}: checksum mismatch in {name}; the bundle is corrupt or was "
                                         f"modified, re-export or re-download it")
    except (zipfile.BadZipFile, EOFError, zlib_error()) as exc:
        raise FastadaptError(f"{path}: not a readable bundle ({exc.__class__.__name__}: truncated or not a zip); re-export it") from None
    except json.JSONDecodeError:
        raise FastadaptError(f"{path}: manifest.json is not valid JSON; the bundle is corrupt") from None
    params = params_from_bytes(data["params.npz"], path)
    if list(params) != list(manifest.get("parameters", [])):
        raise FastadaptError(f"{path}: params.npz does not match the manifest's parameter list; re-export it")
    return Bundle(manifest, data["forward.onnx"], data["step.onnx"], params, path)


def zlib_error():
    import zlib

    return zlib.error
