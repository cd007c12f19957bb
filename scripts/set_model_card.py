"""Put a model card into a bundle: python scripts/set_model_card.py BUNDLE.fadapt CARD.json

CARD.json is a JSON object {section: text}; the sections 'fastadapt info' prints first are
manifest.CARD_SECTIONS (intended_use, not_for, data, training, evaluation, limitations). The bundle is
validated after the change and rewritten atomically; adapted bundles inherit the card.
"""

from __future__ import annotations

import json

from bundle_edit import edit_manifest, run
from fastadapt.errors import FastadaptError


def main(bundle_path: str, card_path: str) -> None:
    with open(card_path, encoding="utf-8") as f:
        card = json.load(f)
    if not isinstance(card, dict) or not all(isinstance(v, str) for v in card.values()):
        raise FastadaptError(f"{card_path}: a model card is a JSON object of section -> text")
    edit_manifest(bundle_path, lambda manifest: manifest.update(model_card=card))
    print(f"{bundle_path}: model card with {len(card)} sections")


if __name__ == "__main__":
    run(main, __doc__)
