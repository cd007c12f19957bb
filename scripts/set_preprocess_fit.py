"""Set how a meta bundle makes non-square pictures square: python scripts/set_preprocess_fit.py BUNDLE.fadapt FIT

FIT is crop (the centre square), pad (fitted inside, padded with the border's colour) or stretch. A run
trained on square images (Omniglot) exports with its training --fit, usually pad; on such images the three
are identical, so the choice is made for the pictures users bring (the shipped characters model: crop,
benchmarks/RESULTS.md section 6). The bundle records the change in provenance.preprocess_fit, is validated
and rewritten atomically; adapted bundles inherit the setting.
"""

from __future__ import annotations

from datetime import date

from bundle_edit import edit_manifest, run
from fastadapt.bundle import read_bundle
from fastadapt.errors import FastadaptError

FITS = ("crop", "pad", "stretch")


def main(bundle_path: str, fit: str) -> None:
    if fit not in FITS:
        raise FastadaptError(f"FIT: '{fit}' is not one of {', '.join(FITS)}")
    manifest = read_bundle(bundle_path).manifest
    if manifest.get("kind") != "meta":
        raise FastadaptError(f"{bundle_path}: not a meta bundle; set the fit before adapting")
    before = manifest["preprocess"].get("fit")

    def set_fit(manifest: dict) -> None:
        manifest["preprocess"]["fit"] = fit
        manifest.setdefault("provenance", {})["preprocess_fit"] = (
            f"set to '{fit}' after training ({date.today().isoformat()}; exported with '{before}'): how "
            f"non-square pictures are made square on the device; the training images are square, where crop, "
            f"pad and stretch are identical")

    edit_manifest(bundle_path, set_fit)
    print(f"{bundle_path}: preprocess.fit {before} -> {fit}")


if __name__ == "__main__":
    run(main, __doc__)
