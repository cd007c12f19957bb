"""Output paths never destroy things: non-regular files, symlinks, permissions, inputs, OS errors, SIGTERM."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import stat

import pytest
from PIL import Image

from fastadapt.errors import FastadaptError
from fastadapt.outputs import check_inputs, refuse_unwritable, write_atomic
from test_cli_runtime import run_cli  # the one in-process CLI runner


def one_error(code, out, err, *needles) -> str:
    assert code != 0
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def temp_files(folder) -> list:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


# ----------------------------------------------------------------------------- write_atomic

def test_fifo_and_socket_are_refused_and_left_alone(tmp_path):
    fifo = tmp_path / "out.fadapt"
    os.mkfifo(fifo)
    with pytest.raises(FastadaptError, match="FIFO"):
        write_atomic(fifo, b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(FastadaptError, match="socket"):
            write_atomic(path, b"data")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()
    assert temp_files(tmp_path) == []


def test_a_character_device_is_refused_before_anything_is_written():
    # only the check (no write is attempted here: as root a broken writer would replace /dev/null)
    with pytest.raises(FastadaptError, match="character device"):
        refuse_unwritable("/dev/null", "--out")


def test_a_symlink_is_refused_and_neither_link_nor_target_changes(tmp_path):
    target = tmp_path / "real.fadapt"
    target.write_bytes(b"old")
    link = tmp_path / "link.fadapt"
    link.symlink_to(target)
    with pytest.raises(FastadaptError, match="symbolic link .*give the target's path"):
        write_atomic(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"old"
    dangling = tmp_path / "dangling.fadapt"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FastadaptError, match="symbolic link"):
        write_atomic(dangling, b"new")
    assert not (tmp_path / "nowhere").exists()


def test_permission_bits_of_an_existing_file_are_kept(tmp_path):
    private = tmp_path / "private.fadapt"
    private.write_bytes(b"old")
    os.chmod(private, 0o600)
    write_atomic(private, b"new")
    assert private.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    # modes other than the private temp file's own 0600 (which would pass without the chmod that keeps them)
    for mode in (0o640, 0o604, 0o751):
        shared = tmp_path / f"shared{mode:o}.fadapt"
        shared.write_bytes(b"old")
        os.chmod(shared, mode)
        write_atomic(shared, b"new")
        assert shared.read_bytes() == b"new" and stat.S_IMODE(os.stat(shared).st_mode) == mode, oct(mode)
    fresh = tmp_path / "fresh.fadapt"
    umask = os.umask(0o022)
    try:
        write_atomic(fresh, b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o644  # not mkstemp's 0600


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give files away")
def test_root_replacing_a_users_file_keeps_its_owner(tmp_path):
    owned = tmp_path / "owned.fadapt"
    owned.write_bytes(b"old")
    os.chown(owned, 1234, 5678)
    write_atomic(owned, b"new")
    assert (os.stat(owned).st_uid, os.stat(owned).st_gid) == (1234, 5678)


def test_os_errors_become_one_line_naming_the_path_and_the_reason(tmp_path, monkeypatch):
    long_name = tmp_path / ("x" * 300 + ".fadapt")
    with pytest.raises(FastadaptError, match="File name too long"):
        write_atomic(long_name, b"data")
    # a long but valid name: the temp name must not overflow the 255-byte limit
    ok = tmp_path / ("y" * 240 + ".fadapt")
    write_atomic(ok, b"data")
    assert ok.read_bytes() == b"data"

    kept = tmp_path / "kept.fadapt"
    kept.write_bytes(b"old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(FastadaptError) as info:
        write_atomic(kept, b"new")
    assert str(kept) in str(info.value) and "No space left on device" in str(info.value)
    assert "\n" not in str(info.value)
    assert kept.read_bytes() == b"old" and temp_files(tmp_path) == []
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("fastadapt.outputs._hidden_file", read_only)  # creating the temp file fails
    with pytest.raises(FastadaptError, match="Read-only file system"):
        write_atomic(tmp_path / "new.fadapt", b"new")


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from fastadapt.cli import _terminate

    out = tmp_path / "out.fadapt"
    out.write_bytes(b"old")
    previous = signal.signal(signal.SIGTERM, _terminate)
    monkeypatch.setattr(os, "fsync", lambda fd: os.kill(os.getpid(), signal.SIGTERM))
    try:
        with pytest.raises(SystemExit) as info:
            write_atomic(out, b"new")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 128 + signal.SIGTERM
    assert out.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_the_cli_entry_point_turns_sigterm_into_cleanup(adapted, glyphs, tmp_path, capsys, monkeypatch):
    sheet = tmp_path / "sheet.png"
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(os, "fsync", lambda fd: os.kill(os.getpid(), signal.SIGTERM))
    code, _, _ = run_cli(capsys, "predict", "--model", adapted, glyphs["queries"], "--sheet", sheet)
    assert code == 128 + signal.SIGTERM
    assert not sheet.exists() and temp_files(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before  # main restored the previous handler


# ----------------------------------------------------------------------------- inputs

def test_check_inputs_compares_resolved_paths(tmp_path):
    data = tmp_path / "data"
    (data / "cls").mkdir(parents=True)
    image = data / "cls" / "1.png"
    image.write_bytes(b"png")
    with pytest.raises(FastadaptError, match="also an input"):
        check_inputs(str(image), [str(data / "cls" / ".." / "cls" / "1.png")], "--sheet")
    with pytest.raises(FastadaptError, match="inside the input folder"):
        check_inputs(str(data / "new.png"), [str(data)], "--sheet")
    alias = tmp_path / "alias"
    alias.symlink_to(data)
    with pytest.raises(FastadaptError, match="inside the input folder"):
        check_inputs(str(alias / "cls" / "x.png"), [str(data)], "--sheet")
    hard = tmp_path / "hard.png"
    os.link(image, hard)
    with pytest.raises(FastadaptError, match="also an input"):
        check_inputs(str(hard), [str(image)], "--out")
    check_inputs(str(tmp_path / "data2" / "x.png"), [str(data), None])  # a sibling with a common prefix is fine


@pytest.fixture(scope="module")
def adapted(bundles, glyphs, tmp_path_factory):
    import fastadapt

    out = tmp_path_factory.mktemp("outputs") / "adapted.fadapt"
    fastadapt.load(bundles["zero"]).adapt(glyphs["shots"], steps=2).save(out)
    return str(out)


def test_adapt_refuses_to_overwrite_its_model_or_shots(bundles, glyphs, tmp_path, capsys):
    model = tmp_path / "m.fadapt"
    shutil.copyfile(bundles["zero"], model)
    before = model.read_bytes()
    code, out, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", model, "--out", model)
    one_error(code, out, err, f"--out {model}", "also an input")
    assert model.read_bytes() == before
    inside = os.path.join(glyphs["shots"], "class00", "m.fadapt")
    code, out, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", model, "--out", inside)
    one_error(code, out, err, "inside the input folder")
    assert not os.path.exists(inside)
    fifo = tmp_path / "fifo.fadapt"
    os.mkfifo(fifo)
    code, out, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", model, "--out", fifo)
    one_error(code, out, err, f"--out {fifo}", "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_predict_sheet_never_overwrites_an_input_and_is_png_only(adapted, glyphs, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(os.path.join(glyphs["queries"], "class00"), folder)
    star = folder / "0.png"
    before = star.read_bytes()
    code, out, err = run_cli(capsys, "predict", "--model", adapted, folder, "--sheet", star)
    one_error(code, out, err, f"--sheet {star}")
    assert star.read_bytes() == before
    code, out, err = run_cli(capsys, "predict", "--model", adapted, star, "--sheet", star)
    one_error(code, out, err, "also an input")
    model = tmp_path / "model.png"  # a bundle under a .png name: the suffix check alone would not save it
    shutil.copyfile(adapted, model)
    code, out, err = run_cli(capsys, "predict", "--model", model, star, "--sheet", model)
    one_error(code, out, err, "also an input")
    assert model.read_bytes() == open(adapted, "rb").read()
    jpg = tmp_path / "sheet.jpg"
    code, out, err = run_cli(capsys, "predict", "--model", adapted, star, "--sheet", jpg)
    one_error(code, out, err, f"--sheet {jpg}", "PNG only", "sheet.png")
    assert not jpg.exists()
    good = tmp_path / "sheet.PNG"
    code, out, err = run_cli(capsys, "predict", "--model", adapted, star, "--sheet", good)
    assert code == 0, err
    with Image.open(good) as image:
        assert image.format == "PNG"


def test_export_refuses_to_write_inside_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.npz").write_bytes(b"checkpoint")
    (run / "config.json").write_text("{}")
    for target in (run / "best.npz", run / "config.json", run / "model.fadapt"):
        code, out, err = run_cli(capsys, "export", run, "--out", target)
        one_error(code, out, err, f"--out {target}", "inside the input folder")
    assert (run / "best.npz").read_bytes() == b"checkpoint"
    assert not (run / "model.fadapt").exists()
    long_out = tmp_path / ("z" * 300 + ".fadapt")
    code, out, err = run_cli(capsys, "export", run, "--out", long_out)
    one_error(code, out, err, "File name too long")


# ----------------------------------------------------------------------------- contact sheet

class Prediction:
    def __init__(self, label, probability=0.5):
        self.label, self.probability = label, probability


def test_sheet_captions_with_newlines_and_other_scripts_are_drawn(tmp_path, glyphs):
    from fastadapt.cli.sheet import _font, contact_sheet, printable

    odd = tmp_path / "two\nlines.png"
    shutil.copyfile(os.path.join(glyphs["queries"], "class00", "0.png"), odd)
    out = tmp_path / "sheet.png"
    contact_sheet([str(odd)], [Prediction("star\r\n\x1b[31mred")], str(out))
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 0
    font = _font(13)
    assert printable("a\nb", font) == "a\\nb"
    assert printable("\x1b[31m", font) == "\\x1b[31m"
    assert printable("\U000F0001", font) == "\\U000f0001"  # a private-use character: no font has a glyph
    assert printable("star 42", font) == "star 42"


def test_a_sheet_of_many_images_is_capped_and_says_so(tmp_path, glyphs, capsys):
    from fastadapt.cli import sheet as sheet_module

    image = os.path.join(glyphs["queries"], "class00", "0.png")
    total = sheet_module.MAX_IMAGES + 5
    out = tmp_path / "sheet.png"
    sheet_module.contact_sheet([image] * total, [Prediction("a")] * total, str(out))
    rows = sheet_module.MAX_IMAGES // sheet_module.COLUMNS
    with Image.open(out) as drawn:
        assert drawn.size == (sheet_module.COLUMNS * sheet_module.THUMB,
                              rows * (sheet_module.THUMB + sheet_module.CAPTION) + sheet_module.FOOTER)
    assert f"first {sheet_module.MAX_IMAGES} of {total} images" in capsys.readouterr().err


def test_sheet_thumbnails_are_decoded_at_reduced_scale(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    from fastadapt.cli.sheet import contact_sheet

    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 100, 50)).save(big, quality=80)
    decoded = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy(self):
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    contact_sheet([str(big)], [Prediction("a")], str(tmp_path / "sheet.png"))
    assert decoded and max(w * h for w, h in decoded) <= 4000 * 3000 // 4  # libjpeg draft: 1/2..1/8 a side


def test_progress_of_short_work_leaves_no_blank_lines_in_a_log(capsys):
    """The adapt/evaluate bar is transient: on a terminal it vanishes; in a log or a pipe it would leave
    only empty lines (two after every `fastadapt adapt 2> log`), so it is not shown there."""
    from fastadapt.progress import lazy_reporter

    report = lazy_reporter("adapting", after_s=0.0)
    for done in range(1, 4):
        report(done, 3)
    report.close()
    assert capsys.readouterr().err == ""
