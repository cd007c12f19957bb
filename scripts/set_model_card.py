"""Put a model card into a bundle: python scripts/set_model_card.py BUNDLE.fadapt CARD.json

CARD.json is a JSON object {section: text}; the sections 'fastadapt info' prints first are
manifest.CARD_SECTIONS (intended_use, not_for, data, training, evaluation, limitations). The bundle is
validated after the change and rewritten atomically; adapted bundles inherit the card.
"""

from __future__ import annotations

import json
import sys

from fastadapt.bundle import read_bundle, save_bundle
from fastadapt.errors import FastadaptError


def main(bundle_path: str, card_path: str) -> None:
    with open(card_path, encoding="utf-8") as f:
        card = json.load(f)
    if not isinstance(card, dict) or not all(isinstance(v, str) for v in card.values()):
        raise FastadaptError(f"{card_path}: a model card is a JSON object of section -> text")
    bundle = read_bundle(bundle_path)
    bundle.manifest["model_card"] = card
    save_bundle(bundle_path, bundle)  # validates the manifest (manifest.validate_manifest) before writing
    read_bundle(bundle_path)
    print(f"{bundle_path}: model card with {len(card)} sections")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[0])
    try:
        main(sys.argv[1], sys.argv[2])
    except FastadaptError as exc:
        sys.exit(f"error: {exc}")
