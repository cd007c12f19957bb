"""What the scripts that change a shipped bundle's manifest share (set_model_card.py, set_preprocess_fit.py)."""

from __future__ import annotations

import sys

from fastadapt.bundle import read_bundle, save_bundle
from fastadapt.errors import FastadaptError


def edit_manifest(bundle_path: str, edit) -> None:
    """``edit(manifest)`` changes it in place; the bundle is validated and rewritten atomically, then read back."""
    bundle = read_bundle(bundle_path)
    edit(bundle.manifest)
    save_bundle(bundle_path, bundle)  # validates the manifest (manifest.validate_manifest) before writing
    read_bundle(bundle_path)


def run(main, doc: str) -> None:
    """``main(BUNDLE, ARG)`` from the command line: usage on a wrong count, a one-line error on bad input."""
    if len(sys.argv) != 3:
        sys.exit(doc.splitlines()[0])
    try:
        main(sys.argv[1], sys.argv[2])
    except FastadaptError as exc:
        sys.exit(f"error: {exc}")
