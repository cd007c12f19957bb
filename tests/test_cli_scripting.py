"""The CLI driven from scripts (review 8b): predict streams its answers in chunks with progress, skipped images
get a record in --json and --csv, stdout that cannot take the results (a closed pipe, a full disk, a closed
descriptor, an ASCII-only encoding) ends cleanly, '--out -' is refused, and info --json shows signatures.
Each runs the shipped characters model (no torch)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import zipfile

import pytest

import fastadapt
from conftest import ROOT
from fastadapt.cli import BROKEN_PIPE_EXIT, runtime_commands
from sample_data import REPO
from test_cli_runtime import run_cli  # the one in-process CLI runner

EXAMPLES = REPO / "examples"
DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"
QUERIES = sorted(str(p) for p in (EXAMPLES / "queries").rglob("*.png"))  # 40 drawings

pytestmark = pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")



@pytest.fixture
def bad(tmp_path) -> str:
    path = tmp_path / "bad.png"
    path.write_bytes(b"garbage, not a picture")
    return str(path)


def _process(*args, **kwargs) -> subprocess.Popen:
    """``fastadapt ARGS`` in a real process (stdout and stderr piped unless given)."""
    env = {**os.environ, "PYTHONPATH": ROOT, **kwargs.pop("env", {})}
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "fastadapt", *map(str, args)], env=env, **kwargs)


def _one_error(err: str) -> str:
    """The single line of stderr, which must be an error line (no traceback, nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- F2: streaming and progress

def test_predict_prints_each_chunk_before_predicting_the_next(shapes, capsys, monkeypatch):
    monkeypatch.setattr(runtime_commands, "CHUNK", 8)
    printed_before = []  # lines on stdout when each predict call starts
    original = fastadapt.AdaptedModel.predict

    def recording(self, images, *args, **kwargs):
        if images:  # not the up-front check of --top and the threshold
            printed_before.append(sys.stdout.getvalue().count("\n"))
            assert len(images) <= 8
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(fastadapt.AdaptedModel, "predict", recording)
    code, out, err = run_cli(capsys, "predict", "--model", shapes, EXAMPLES / "queries", "--json")
    assert code == 0, err
    assert printed_before == [0, 8, 16, 24, 32]
    assert len(out.splitlines()) == 40


@pytest.mark.parametrize("form", [(), ("--json",), ("--csv", "--top", "2"), ("--unknown",)])
def test_chunked_answers_are_those_of_one_call(shapes, capsys, monkeypatch, form):
    code, whole, err = run_cli(capsys, "predict", "--model", shapes, EXAMPLES / "queries", *form)
    assert code == 0, err
    monkeypatch.setattr(runtime_commands, "CHUNK", 3)  # 40 images: 14 chunks, the last one short
    code, chunked, err = run_cli(capsys, "predict", "--model", shapes, EXAMPLES / "queries", *form)
    assert code == 0, err
    assert chunked == whole and len(whole.splitlines()) >= 40
    if form == ("--json",):  # and they are the API's, all images in one call
        answers = fastadapt.load(shapes).predict(QUERIES)
        assert [json.loads(line) for line in whole.splitlines()] == [
            {"path": path, **answer.to_dict()} for path, answer in zip(QUERIES, answers)]


def test_progress_is_reported_per_chunk_for_text_and_quiet_for_json_and_csv(shapes, capsys, monkeypatch):
    monkeypatch.setattr(runtime_commands, "CHUNK", 16)
    calls = []

    def reporter(label):
        def report(done, total):
            calls.append((label, done, total))

        report.close = lambda: calls.append("closed")
        return report

    monkeypatch.setattr(runtime_commands, "lazy_reporter", reporter)
    code, out, err = run_cli(capsys, "predict", "--model", shapes, EXAMPLES / "queries")
    assert code == 0, err
    assert calls == [("predicting", 16, 40), ("predicting", 32, 40), ("predicting", 40, 40), "closed"]
    for quiet in ("--json", "--csv"):
        calls.clear()
        assert run_cli(capsys, "predict", "--model", shapes, EXAMPLES / "queries", quiet)[0] == 0
        assert calls == []


def test_an_interrupted_predict_keeps_the_answers_printed(shapes):
    # 4,000 images (15 chunks of 256 and a short one): on a busy machine the signal can come late, but not
    # after all of them (with 1,000 a loaded 2-core machine once finished them first)
    paths = QUERIES * 100
    process = _process("predict", "--model", shapes, "--json", *paths)
    first = process.stdout.readline()  # arrives after the first chunk, not at the end
    process.send_signal(signal.SIGINT)
    rest, err = process.stdout.read(), process.stderr.read()  # (not communicate: it would skip what readline buffered)
    lines = [first] + rest.splitlines(keepends=True)
    assert process.wait(timeout=120) == 130, err
    assert b"Traceback" not in err
    assert len(lines) < len(paths)  # stopped before the end, with the answers of the first chunk(s) printed
    assert all(json.loads(line)["label"] for line in lines)  # each line whole


def test_a_missing_path_is_still_refused_before_any_answer(shapes, capsys):
    code, out, err = run_cli(capsys, "predict", "--model", shapes, QUERIES[0], "missing.png", "--json")
    assert code == 2 and out == ""
    assert "missing.png: no such image file or folder" in _one_error(err)


# ----------------------------------------------------------------------------- F10: records for skipped images

def test_json_has_an_error_record_for_each_skipped_image(shapes, bad, capsys):
    code, out, err = run_cli(capsys, "predict", "--model", shapes, QUERIES[0], bad, QUERIES[1], "--json")
    assert code == 0, err  # some images were answered
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [QUERIES[0], bad, QUERIES[1]]  # in the order given
    assert set(records[1]) == {"path", "error"}
    assert records[1]["error"].startswith("not a readable image")  # the warning's reason, without the path
    assert set(records[0]) == {"path", "label", "probability", "top", "unknown", "score"}
    assert f"warning: {bad}: not a readable image" in err


def test_csv_has_a_row_with_an_error_column_for_each_skipped_image(shapes, bad, capsys):
    code, out, err = run_cli(capsys, "predict", "--model", shapes, bad, QUERIES[0], "--csv", "--top", "2")
    assert code == 0, err
    header, skipped, answered = list(csv.reader(io.StringIO(out)))
    assert header == ["path", "label", "probability", "unknown", "score", "top1_label", "top1_probability",
                      "top2_label", "top2_probability", "error"]  # the columns as before, error last
    assert skipped[0] == bad and skipped[1:-1] == [""] * 8 and skipped[-1].startswith("not a readable image")
    assert answered[0] == QUERIES[0] and answered[1] and answered[-1] == ""


def test_text_output_leaves_a_skipped_image_to_the_warning(shapes, bad, capsys):
    code, out, err = run_cli(capsys, "predict", "--model", shapes, bad, QUERIES[0])
    assert code == 0, err
    assert bad not in out and out.startswith(QUERIES[0])
    assert f"warning: {bad}: not a readable image" in err


def test_a_chunk_of_only_unreadable_images_does_not_stop_the_others(shapes, bad, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(runtime_commands, "CHUNK", 2)
    other = tmp_path / "other.png"
    other.write_bytes(b"")
    code, out, err = run_cli(capsys, "predict", "--model", shapes, bad, other, QUERIES[0], "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [("error" in r) for r in records] == [True, True, False]


def test_no_readable_image_is_one_error_and_nothing_on_stdout(shapes, bad, capsys, tmp_path):
    other = tmp_path / "other.png"
    other.write_bytes(b"")
    for form in ((), ("--json",), ("--csv",)):
        code, out, err = run_cli(capsys, "predict", "--model", shapes, bad, other, *form)
        assert code == 2 and out == "", form
        assert "no readable image to predict" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- F11: non-UTF-8 names in JSON

@pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes")
def test_a_non_utf8_name_in_json_gives_its_bytes_back_as_documented(shapes, tmp_path, capsys):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(QUERIES[0], "rb") as source, open(name, "wb") as copy:
        copy.write(source.read())
    code, out, err = run_cli(capsys, "predict", "--model", shapes, os.fsdecode(name), "--json")
    assert code == 0, err
    path = json.loads(out)["path"]
    assert path.endswith("caf\udce9.png") and os.fsencode(path) == name
    readme = (REPO / "README.md").read_text()
    assert '"caf\\udce9.png"' in readme and "os.fsencode(path)" in readme


# ----------------------------------------------------------------------------- F4, F9: stdout that cannot take results

def test_a_reader_that_stops_early_ends_the_command_quietly_with_141(shapes):
    process = _process("predict", "--model", shapes, EXAMPLES / "queries", "--json")
    process.stdout.close()  # as '| head -1' does once it has its line: every write now fails with EPIPE
    err = process.stderr.read()
    assert process.wait(timeout=120) == BROKEN_PIPE_EXIT == 141
    assert err == b""  # no traceback, no "Exception ignored ... BrokenPipeError" at exit


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_on_stdout_is_one_error_line(shapes, tmp_path):
    out = tmp_path / "mine.fadapt"
    for args in (("predict", "--model", shapes, EXAMPLES / "queries"), ("info", "--json"),
                 ("adapt", "--shots", EXAMPLES / "shots", "--out", out)):
        with open("/dev/full", "w") as full:
            process = _process(*args, stdout=full)
            _, err = process.communicate(timeout=120)
        assert process.returncode == 2, (args, err)
        assert _one_error(err.decode()) == "error: cannot write the results to standard output (No space left on device)"
    assert fastadapt.load(str(out)).classes  # adapt's file is written before its summary, as documented


def test_a_closed_stdout_is_refused(shapes):
    process = subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", sys.executable, "-m", "fastadapt", "predict",
                              "--model", shapes, QUERIES[0]], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": ROOT})
    assert process.returncode == 2
    assert "standard output is closed" in _one_error(process.stderr)


def test_labels_an_ascii_stdout_cannot_show_are_escaped(tmp_path):
    shots = tmp_path / "shots"
    for label, source in (("étoile★", "star"), ("円", "circle")):
        (shots / label).mkdir(parents=True)
        for image in (EXAMPLES / "shots" / source).glob("*.png"):
            (shots / label / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "uni.fadapt"
    ascii_env = {"PYTHONIOENCODING": "ascii"}
    for args in (("adapt", "--shots", shots, "--out", out), ("predict", "--model", out, shots / "円", "--top", "1")):
        process = _process(*args, env=ascii_env)
        stdout, err = process.communicate(timeout=120)
        assert process.returncode == 0 and b"Traceback" not in err, err
        assert b"\\u5186" in stdout
    assert b"\\xe9toile\\u2605" in _process("info", out, env=ascii_env).communicate(timeout=120)[0]


# ----------------------------------------------------------------------------- F12: --out -

def test_out_dash_is_refused_for_every_file_output(shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "keygen", "--out", tmp_path / "k")[0] == 0
    for args in (("adapt", "--shots", EXAMPLES / "shots", "--out", "-"),
                 ("export", shapes, "--format", "onnx", "--out", "-"),
                 ("sign", shapes, "--key", tmp_path / "k", "--out", "-"),
                 ("predict", "--model", shapes, QUERIES[0], "--sheet", "-")):
        code, out, err = run_cli(capsys, *args)
        flag = "--sheet" if "--sheet" in args else "--out"
        assert code == 2, args
        assert f"{flag} -: writing to standard output is not supported; give a file name" in _one_error(err)
    code, out, err = run_cli(capsys, "keygen", "--out", "-")  # would write '-' and '-.pub'
    assert code == 2 and "--out -: writing to standard output is not supported" in _one_error(err)
    code, out, err = run_cli(capsys, "train", "--data", "sinusoid", "--iterations", "1", "--out", "-")
    assert code == 2 and ("--out -: a run is a folder, not standard output" in _one_error(err)
                          or "needs the training extra" in err)  # the runtime install has no trainer
    assert not os.path.exists("-") and not os.path.exists("-.pub")
    assert run_cli(capsys, "adapt", "--shots", EXAMPLES / "shots", "--out", tmp_path / "-")[0] == 0  # a file named '-'
    assert fastadapt.load(str(tmp_path / "-")).classes


# ----------------------------------------------------------------------------- F13: two writers of one --out

def test_concurrent_writers_of_one_out_last_wins_whole_as_documented(tmp_path):
    out = tmp_path / "same.fadapt"
    few = tmp_path / "few"
    for name in ("star", "circle"):
        (few / name).mkdir(parents=True)
        for image in (EXAMPLES / "shots" / name).glob("*.png"):
            (few / name / image.name).write_bytes(image.read_bytes())
    runs = [_process("adapt", "--shots", shots, "--out", out) for shots in (EXAMPLES / "shots", few)]
    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    assert len(fastadapt.load(str(out)).classes) in (8, 2)  # one run's whole result
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    readme = (REPO / "README.md").read_text()
    assert "last to finish wins, and the file is always one whole result" in " ".join(readme.split())


# ----------------------------------------------------------------------------- F14: info --json signatures

def test_info_json_shows_the_signatures_as_plain_info_does(shapes, tmp_path, capsys):
    code, out, err = run_cli(capsys, "info", shapes, "--json")
    assert code == 0, err
    assert json.loads(out)["signatures"] == []
    key, signed = tmp_path / "k", tmp_path / "signed.fadapt"
    assert run_cli(capsys, "keygen", "--out", key)[0] == 0
    public = (tmp_path / "k.pub").read_text().strip()
    assert run_cli(capsys, "sign", shapes, "--key", key, "--out", signed)[0] == 0
    code, out, err = run_cli(capsys, "info", signed, "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["signatures"] == [{"key": public, "valid": True}] and document["kind"] == "adapted"
    assert f"{public} (valid)" in run_cli(capsys, "info", signed)[1]
    # a signature that no longer matches (the member edited): shown as invalid, as the text shows it
    forged = tmp_path / "forged.fadapt"
    with zipfile.ZipFile(signed) as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "signature.ed25519":  # "ed25519 KEY SIGNATURE": another last hex digit
                data = data.rstrip()
                data = data[:-1] + (b"0" if data[-1:] != b"0" else b"1") + b"\n"
            target.writestr(item, data)
    code, out, err = run_cli(capsys, "info", forged, "--json")
    assert code == 0, err
    assert json.loads(out)["signatures"] == [{"key": public, "valid": False}]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, "abort"])
def test_an_interrupt_outside_the_command_still_exits_130(interrupt, capsys, monkeypatch):
    """Ctrl-C that reaches main (Typer 0.16, the oldest supported, passes it on as Abort;
    or one outside the command) exits 130 with one 'interrupted' line, as a shell expects of Ctrl-C."""
    import typer

    import fastadapt.cli

    def interrupted(**kwargs):
        raise typer.Abort() if interrupt == "abort" else KeyboardInterrupt()

    monkeypatch.setattr(fastadapt.cli, "app", interrupted)
    code, out, err = run_cli(capsys, "info")
    assert code == 130 and out == "" and err.strip() == "interrupted"


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_a_command_unwinds_with_exit_143(capsys, monkeypatch):
    """SIGTERM (kill, systemd) while a command runs unwinds like Ctrl-C (cleanups run) and
    exits 128 + 15 = 143, as a shell reports a terminated tool; the previous handler is restored afterwards."""
    import fastadapt.cli

    before = signal.getsignal(signal.SIGTERM)

    def command(**kwargs):
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, before)  # else this kills pytest
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(fastadapt.cli, "app", command)
    code, out, err = run_cli(capsys, "info")
    assert code == 128 + signal.SIGTERM == 143 and signal.getsignal(signal.SIGTERM) == before


def test_progress_shows_no_bar_on_a_stderr_that_is_no_terminal(capsys, monkeypatch):
    """In a log or a pipe the transient bar would leave only blank lines, so none is
    drawn however long the work; and rich's console there is LOG_WIDTH wide (not 80) unless COLUMNS says."""
    from fastadapt import progress

    report = progress.lazy_reporter("working", after_s=0.0)  # any work counts as long
    for done in (1, 5, 10):
        report(done, 10)
    report.close()
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("COLUMNS", raising=False)
    assert progress.stderr_console().width == progress.LOG_WIDTH == 240
    monkeypatch.setenv("COLUMNS", "100")
    assert progress.stderr_console().width == 100
    # (P3) on a terminal, work estimated to take less than after_s draws no bar either
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    report = progress.lazy_reporter("working", after_s=3600.0)
    for done in (1, 5, 10):
        report(done, 10)
    report.close()
    assert capsys.readouterr().err == ""
