"""Restate a bundle's graphs at the ONNX IR version fastadapt writes: python scripts/stamp_ir_version.py BUNDLE.fadapt

Bundles exported before fastadapt stamped IR 9 (fastadapt.onnx_wire.IR_VERSION) carry IR 10, which
onnxruntime 1.17 refuses; the shipped built-ins were restamped with this. Only the graphs' ir_version
field changes (their nodes, opset and the parameters stay), the bundle is validated and rewritten
atomically, and a signed bundle loses its signature (sign it again).
"""

from __future__ import annotations

import sys

import onnx

from fastadapt.bundle import read_bundle, save_bundle
from fastadapt.errors import FastadaptError
from fastadapt.onnx_wire import stamp_ir_version


def restamp(graph: bytes) -> bytes:
    model = onnx.load_from_string(graph)
    stamp_ir_version(model)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def main(bundle_path: str) -> None:
    bundle = read_bundle(bundle_path, check_trust=False)
    bundle.forward_onnx, bundle.step_onnx = restamp(bundle.forward_onnx), restamp(bundle.step_onnx)
    save_bundle(bundle_path, bundle)
    print(f"{bundle_path}: graphs at ONNX IR version {onnx.load_from_string(read_bundle(bundle_path).forward_onnx).ir_version}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[0])
    try:
        main(sys.argv[1])
    except FastadaptError as exc:
        sys.exit(f"error: {exc}")
