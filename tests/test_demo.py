"""fastadapt demo: runs on the shipped example drawings, with a given model or the shipped default.

In-process through the real entry point (test_cli_runtime.run_cli); test_cli_runtime and test_runtime keep
the checks that need a real process."""

import pytest

from sample_data import REPO
from test_cli_runtime import run_cli

DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"


def test_demo_with_a_given_model(bundles, tmp_path, capsys):
    code, out, err = run_cli(capsys, "demo", "--model", bundles["zero"], "--sheet", tmp_path / "sheet.png")
    assert code == 0, err
    assert "accuracy" in out and "/40" in out
    assert (tmp_path / "sheet.png").stat().st_size > 1000


@pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped yet")
def test_demo_with_the_default_model_learns_the_shapes(capsys):
    code, out, err = run_cli(capsys, "demo", "--shots", "5")
    assert code == 0, err
    correct = int(out.split("accuracy ")[1].split("/")[0])
    assert correct >= 32  # 8 shapes, 5 drawings each: well above chance (5 of 40)


def test_demo_sheet_in_a_missing_folder_fails_before_the_demo(bundles, tmp_path, capsys):
    code, out, err = run_cli(capsys, "demo", "--model", bundles["zero"], "--sheet", tmp_path / "no" / "sheet.png")
    assert code == 2 and "Traceback" not in err
    assert "--sheet" in err and "accuracy" not in out


@pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped yet")
def test_demo_learns_from_exactly_shots_pictures_per_class(capsys, monkeypatch):
    """--shots N gives each class N example pictures, as the output says, not more."""
    from fastadapt.runtime.model import Model

    real, seen = Model.adapt, []

    def adapt(self, shots, *args, **kwargs):
        seen.append({label: len(files) for label, files in shots.items()})
        return real(self, shots, *args, **kwargs)

    monkeypatch.setattr(Model, "adapt", adapt)
    code, out, err = run_cli(capsys, "demo", "--shots", "2")
    assert code == 0, err
    assert len(seen) == 1 and len(seen[0]) == 8 and set(seen[0].values()) == {2}


@pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped yet")
def test_demo_sheet_may_not_be_written_into_the_shipped_examples(capsys):
    """--sheet inside the example pictures the demo reads is refused before the demo (it
    would add a picture to the installed package's examples, and the next demo would read it)."""
    from fastadapt.cli.demo_command import EXAMPLES  # the installed package's, which the demo reads

    sheet = EXAMPLES / "queries" / "star" / "demo-sheet.png"
    try:
        code, out, err = run_cli(capsys, "demo", "--sheet", sheet)
        assert code == 2 and "--sheet" in err and "accuracy" not in out
        assert not sheet.exists()
    finally:
        if sheet.exists():  # (only when the refusal failed: leave the package as it was)
            sheet.unlink()
