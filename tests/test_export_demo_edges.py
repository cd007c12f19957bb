"""Edge cases found by a hostile-input review of ONNX export, graph loading, demo and output checks: an export
that must write both files or neither, bundle graphs with other inputs/outputs than the runtime uses, file
names that look like Rich markup or hold terminal escapes, long file names and a folder where the recipe goes.
Each runs the shipped characters model (no torch); crafting graphs and exporting need the onnx package."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import sys
from types import SimpleNamespace

import pytest

import fastadapt
from fastadapt.errors import FastadaptError
from sample_data import REPO
from test_bundle_hardening import craft, members_of
from test_cli_runtime import run_cli  # the one in-process CLI runner
from test_outputs import one_error

EXAMPLES = REPO / "examples"
ASSETS = REPO / "fastadapt" / "assets"
DEFAULT = ASSETS / "default.fadapt"  # the shipped characters model (a meta bundle)
STAR = str(EXAMPLES / "queries" / "star" / "star_1.png")
ESCAPE = "\x1b]0;PWNED\x07"  # sets a terminal's title
SHOWN = "\\x1b]0;PWNED\\x07"  # the same, as messages print it

pytestmark = pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs the onnx package")
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a folder nobody can create files "
                                                                         "in: Linux /proc")



def with_graph(src, dst, member: str, edit) -> str:
    """A copy of bundle ``src`` whose ``member`` graph ("forward.onnx", "step.onnx") ``edit(graph)`` changed,
    with the checksums recomputed: what someone editing a bundle on purpose would do."""
    import onnx

    model = onnx.load_from_string(members_of(src)[member])
    edit(model.graph)
    return craft(src, dst, **{member.replace(".", "_"): model.SerializeToString()})


def renamed(old: str, new: str):
    """An edit that renames the tensor ``old`` (a graph output) to ``new`` everywhere."""
    def edit(graph):
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]
            node.output[:] = [new if name == old else name for name in node.output]
        for output in graph.output:
            if output.name == old:
                output.name = new
    return edit


def three_channels(graph):
    """An edit that declares 3 channels for the 'images' input (the bundle preprocesses to 1)."""
    graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3


def second_replace_fails(monkeypatch, targets, error: BaseException) -> None:
    """os.replace raises ``error`` on its second rename onto one of ``targets``: the first output is in place."""
    real, calls = os.replace, []

    def replace(src, dst):
        if os.fspath(dst) in targets:
            calls.append(dst)
            if len(calls) == 2:
                raise error
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


# ----------------------------------------------------------------------------- A: both files or neither

@needs_onnx
@needs_proc
def test_export_onnx_checks_both_folders_before_writing_either(shapes, tmp_path, monkeypatch):
    from fastadapt import standalone

    monkeypatch.setattr(standalone, "_build_onnx", lambda *a: pytest.fail("built before checking the recipe's folder"))
    (tmp_path / "keep.onnx").write_text("OLD")
    with pytest.raises(FastadaptError, match="/proc/r.json: cannot write in folder /proc") as error:
        fastadapt.load(shapes).export_onnx(str(tmp_path / "keep.onnx"), "/proc/r.json")
    assert "\n" not in str(error.value)
    assert (tmp_path / "keep.onnx").read_text() == "OLD" and os.listdir(tmp_path) == ["keep.onnx"]


@needs_onnx
def test_export_onnx_puts_the_first_file_back_when_the_second_fails(shapes, tmp_path, monkeypatch):
    model, recipe = tmp_path / "keep.onnx", tmp_path / "keep.preprocess.json"
    model.write_text("OLD MODEL")
    recipe.write_text("OLD RECIPE")
    second_replace_fails(monkeypatch, {str(model), str(recipe)}, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(FastadaptError, match="cannot write .Input/output error.; nothing was written"):
        fastadapt.load(shapes).export_onnx(str(model))
    assert model.read_text() == "OLD MODEL" and recipe.read_text() == "OLD RECIPE"
    assert sorted(os.listdir(tmp_path)) == ["keep.onnx", "keep.preprocess.json"]  # no temp file left


@needs_onnx
def test_an_interrupted_export_removes_the_new_first_file(shapes, tmp_path, monkeypatch):
    """SIGTERM (SystemExit in the CLI) or Ctrl-C between the two renames: a new file made so far goes again."""
    model, recipe = tmp_path / "new.onnx", tmp_path / "new.preprocess.json"
    second_replace_fails(monkeypatch, {str(model), str(recipe)}, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        fastadapt.load(shapes).export_onnx(str(model))
    assert os.listdir(tmp_path) == []


@needs_onnx
def test_cli_export_changes_both_files_or_neither(shapes, tmp_path, monkeypatch, capsys):
    model, recipe = tmp_path / "keep.onnx", tmp_path / "keep.preprocess.json"
    model.write_text("OLD MODEL")
    second_replace_fails(monkeypatch, {str(model), str(recipe)}, OSError(errno.ENOSPC, "No space left on device"))
    code, out, err = run_cli(capsys, "export", shapes, "--format", "onnx", "--out", model)
    one_error(code, out, err, "No space left on device", "nothing was written")
    assert model.read_text() == "OLD MODEL" and os.listdir(tmp_path) == ["keep.onnx"]


# ----------------------------------------------------------------------------- B: the graphs the runtime calls

@needs_onnx
def test_a_forward_graph_without_features_is_refused_at_load(shapes, tmp_path, capsys):
    nofeat = with_graph(shapes, tmp_path / "nofeat.fadapt", "forward.onnx", renamed("features", "feats"))
    with pytest.raises(FastadaptError, match="nofeat.fadapt: forward.onnx lacks the output.s. 'features'"):
        fastadapt.load(nofeat)
    one_error(*run_cli(capsys, "export", nofeat, "--format", "onnx", "--out", tmp_path / "nf.onnx"),
              "nofeat.fadapt", "'features'", "re-export it")
    one_error(*run_cli(capsys, "predict", "--model", nofeat, STAR), "nofeat.fadapt", "'features'")
    assert os.listdir(tmp_path) == ["nofeat.fadapt"]


@needs_onnx
def test_a_forward_graph_taking_other_images_than_the_manifest_makes_is_one_line(shapes, tmp_path, capsys):
    badimg = with_graph(shapes, tmp_path / "badimg.fadapt", "forward.onnx", three_channels)
    size = fastadapt.load().preprocess.size  # the shipped model's input, whatever size it is
    needles = ("badimg.fadapt", f"forward.onnx takes images of shape [batch, 3, {size}, {size}]",
               f"[batch, 1, {size}, {size}]")
    one_error(*run_cli(capsys, "predict", "--model", badimg, STAR), *needles)
    one_error(*run_cli(capsys, "export", badimg, "--format", "onnx", "--out", tmp_path / "bi.onnx"), *needles)
    assert os.listdir(tmp_path) == ["badimg.fadapt"]


@needs_onnx
@pytest.mark.parametrize("edit, needle", [(renamed("loss", "cost"), "step.onnx lacks the output(s) 'loss'"),
                                          (three_channels, "step.onnx takes images of shape [batch, 3, {s}, {s}], "
                                                           "forward.onnx [batch, 1, {s}, {s}]")])
def test_a_step_graph_unlike_what_the_runtime_feeds_is_one_line(tmp_path, capsys, edit, needle):
    crafted = with_graph(DEFAULT, tmp_path / "step.fadapt", "step.onnx", edit)
    code, out, err = run_cli(capsys, "adapt", "--model", crafted, "--shots", EXAMPLES / "shots",
                             "--out", tmp_path / "out.fadapt")
    one_error(code, out, err, "step.fadapt", needle.format(s=fastadapt.load().preprocess.size))
    assert not (tmp_path / "out.fadapt").exists()


@needs_onnx
def test_the_standalone_builder_names_a_missing_features_output(shapes, tmp_path):
    """A Bundle built by hand skips load's checks: still one line, not StopIteration."""
    from fastadapt import standalone

    adapted = fastadapt.load(shapes)
    nofeat = with_graph(shapes, tmp_path / "nofeat.fadapt", "forward.onnx", renamed("features", "feats"))
    crafted = SimpleNamespace(bundle=SimpleNamespace(forward_onnx=members_of(nofeat)["forward.onnx"]),
                              params=adapted.params, manifest=adapted.manifest, classes=adapted.classes, path=nofeat)
    with pytest.raises(FastadaptError, match="nofeat.fadapt: forward.onnx has no 'features' output"):
        standalone._build_onnx(crafted, {})


@pytest.mark.parametrize("name", ["characters", "photos"])
def test_shipped_bundles_and_their_adaptations_pass_the_graph_checks(name, tmp_path):
    meta = fastadapt.load(name)
    examples = ASSETS / ("photo_examples" if meta.preprocess.channels == 3 else "examples") / "shots"
    one_each = {folder.name: [str(sorted(folder.iterdir())[0])] for folder in sorted(examples.iterdir())}
    meta.adapt(one_each, steps=1).save(str(tmp_path / "a.fadapt"))
    adapted = fastadapt.load(str(tmp_path / "a.fadapt"))
    assert adapted.graphs.step_session is not None  # the step graph's checks, made lazily, pass too
    assert adapted.predict(one_each[adapted.classes[0]][0]).label in adapted.classes


# ----------------------------------------------------------------------------- C: names printed as given

def test_demo_prints_file_names_verbatim_not_as_markup_or_escapes(tmp_path, capsys):
    (tmp_path / "[").mkdir()
    model, sheet = tmp_path / "[" / f"x{ESCAPE}].fadapt", tmp_path / "[" / "y].png"
    shutil.copyfile(DEFAULT, model)
    code, out, err = run_cli(capsys, "demo", "--model", model, "--sheet", sheet)
    assert code == 0, err
    assert f"fastadapt info {tmp_path}/[/x{SHOWN}].fadapt for its model card" in out
    assert f"wrote {sheet}" in err and sheet.stat().st_size > 1000
    assert ESCAPE not in out + err and "\x07" not in out + err


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links and control characters in file names")
def test_error_lines_escape_control_characters_in_file_names(tmp_path, capsys):
    model = tmp_path / f"m{ESCAPE}.fadapt"
    shutil.copyfile(DEFAULT, model)
    os.symlink(f"t{ESCAPE}", tmp_path / f"l{ESCAPE}.fadapt")
    shots = EXAMPLES / "shots"
    cases = [(["demo", "--sheet", tmp_path / f"x{ESCAPE}.jpg"], "--sheet writes PNG only"),
             (["info", f"a{ESCAPE}", "--model", "b"], "info got two models"),
             (["adapt", "--shots", shots, "--out", tmp_path / f"no{ESCAPE}" / "x.fadapt"], "does not exist"),
             (["adapt", "--shots", shots, "--out", tmp_path / f"l{ESCAPE}.fadapt"], "is a symbolic link (to t"),
             (["adapt", "--shots", shots, "--model", model, "--out", model], "is also an input of this command")]
    for args, needle in cases:
        line = one_error(*run_cli(capsys, *args), needle, SHOWN)
        assert "\x1b" not in line and "\x07" not in line, line


# ----------------------------------------------------------------------------- D, E: output names

def test_the_folder_probe_takes_the_longest_legal_file_names(tmp_path, capsys):
    from fastadapt.cli import check_out

    longest = tmp_path / ("a" * 248 + ".fadapt")  # 255 characters: the limit of most file systems
    check_out(longest)
    assert os.listdir(tmp_path) == []  # the probe is gone again
    out = tmp_path / ("a" * 236 + ".fadapt")
    code, stdout, err = run_cli(capsys, "adapt", "--shots", EXAMPLES / "shots", "--steps", "0", "--out", out)
    assert code == 0, err
    assert os.listdir(tmp_path) == [out.name]


@needs_onnx
def test_a_folder_where_the_recipe_goes_is_named_with_the_fix(shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("m4.preprocess.json")
    one_error(*run_cli(capsys, "export", shapes, "--format", "onnx", "--out", "m4.onnx"),
              "--out m4.onnx: the recipe file m4.preprocess.json (written beside --out) is a folder; "
              "remove it or choose another --out")
    with pytest.raises(FastadaptError, match=r"the recipe file m4.preprocess.json \(written beside the model\) "
                                             r"is a folder; remove it"):
        fastadapt.load(shapes).export_onnx("m4.onnx")
    assert os.listdir(tmp_path) == ["m4.preprocess.json"]
