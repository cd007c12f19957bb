"""fastadapt inside a host program leaves the host's process-wide state alone: the umask, warning filters.

Also the file objects a web service hands over: streams that return short reads, async uploads.
"""

from __future__ import annotations

import errno
import gc
import io
import os
import stat
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

import fastadapt
from fastadapt import images
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess, to_uint8
from fastadapt.outputs import probe_folder, write_all, write_atomic

SPEC = Preprocess()
SHOTS = Path(__file__).resolve().parent.parent / "examples" / "shots"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def png(width: int, height: int, value: int = 255) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A gray PNG claiming width x height, with a token of pixel data: only its header is read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def umask_027():
    """Run under umask 027, restored afterwards (only the test sets it, never fastadapt)."""
    umask = os.umask  # kept: the test replaces os.umask before this fixture ends
    before = umask(0o027)
    yield
    umask(before)


def never_umask(monkeypatch):
    def refuse(*args):
        raise AssertionError("os.umask changes the whole process's umask; fastadapt must not call it")
    monkeypatch.setattr(os, "umask", refuse)


# ----------------------------------------------------------------------------- umask

@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_new_outputs_get_the_umask_mode_and_existing_ones_keep_theirs(tmp_path, monkeypatch, umask_027):
    private, shared = tmp_path / "private.fadapt", tmp_path / "shared.fadapt"
    for path, bits in ((private, 0o600), (shared, 0o664)):
        path.write_bytes(b"old")
        os.chmod(path, bits)
    never_umask(monkeypatch)
    write_atomic(tmp_path / "new.fadapt", b"new")
    write_all({tmp_path / "a.fadapt": b"a", private: b"p", shared: b"s"})
    probe_folder(str(tmp_path / "out.fadapt"))
    assert mode(tmp_path / "new.fadapt") == mode(tmp_path / "a.fadapt") == 0o640  # 0666 less the umask
    assert (mode(private), mode(shared)) == (0o600, 0o664)  # kept, although the umask would change them
    assert private.read_bytes() == b"p" and shared.read_bytes() == b"s"
    assert sorted(os.listdir(tmp_path)) == ["a.fadapt", "new.fadapt", "private.fadapt", "shared.fadapt"]


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_saving_an_adapted_model_never_touches_the_umask(tmp_path, monkeypatch, umask_027):
    adapted = fastadapt.load().adapt({c: sorted((SHOTS / c).glob("*.png"))[:2] for c in ("star", "circle")})
    never_umask(monkeypatch)
    adapted.save(str(tmp_path / "mine.fadapt"))
    assert mode(tmp_path / "mine.fadapt") == 0o640
    assert fastadapt.load(str(tmp_path / "mine.fadapt")).classes == ["star", "circle"]


def test_a_folder_that_refuses_the_temp_file_is_one_line(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(FastadaptError, match="Read-only file system") as info:
        write_atomic(tmp_path / "new.fadapt", b"new")
    assert str(tmp_path / "new.fadapt") in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- warning filters

def test_decoding_leaves_the_hosts_warning_filters_alone():
    """A filter the host adds while an image is being decoded (here: from inside the stream's read, as a
    host thread could at that moment) is still there afterwards: catch_warnings around decoding would drop
    it, as it restores the filters it saved on entry (for every thread: they are process-wide)."""

    class HostAddsAFilter(io.BytesIO):
        added = False

        def read(self, *args):
            if args != (0,) and not self.added:  # once, at the first read of the image (read(0) comes before)
                warnings.filterwarnings("ignore", message="host filter added while decoding")
                self.added = True
            return super().read(*args)

    with warnings.catch_warnings():  # the test's own clean-up of the host filter
        filters, show = warnings.filters, warnings.showwarning
        to_uint8(HostAddsAFilter(png(40, 30)), SPEC)
        assert warnings.filters is filters and warnings.showwarning is show
        assert any(f[1] is not None and f[1].pattern == "host filter added while decoding" for f in warnings.filters)


def test_oversized_images_are_refused_without_pillows_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would raise instead of our message
        with pytest.raises(FastadaptError, match="12000x12000 pixels .*over the limit of 50 MP"):
            to_uint8(png_header(12000, 12000), SPEC)  # over Pillow's warning threshold, under its error one
        with pytest.raises(FastadaptError, match="image bytes: 400 MP is over the limit of 50 MP"):
            to_uint8(png_header(20000, 20000), SPEC)


def test_a_host_that_lowered_pillows_limit_keeps_it(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(FastadaptError) as info:
        to_uint8(png(100, 100), SPEC)  # over twice the host's limit: Pillow would refuse it too
    assert "image bytes: 100x100" in str(info.value) and "Image.MAX_IMAGE_PIXELS" in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_uint8(png(40, 40), SPEC).shape == (1, 28, 28)  # between 1x and 2x: read, no warning


def test_damaged_and_unknown_images_are_still_named():
    with pytest.raises(FastadaptError, match="no known image format"):
        to_uint8(b"not an image at all", SPEC)
    with pytest.raises(FastadaptError, match="image bytes: not a readable image"):
        to_uint8(png(40, 30)[:60], SPEC)


# ----------------------------------------------------------------------------- file objects

class Trickle(io.RawIOBase):
    """A non-seekable stream (a socket, a network body) whose read(n) returns at most ``step`` bytes."""

    def __init__(self, data: bytes, step: int = 7):
        self.data, self.step, self.calls = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        size = self.step if n is None or n < 0 else min(n, self.step)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def test_a_stream_that_returns_short_reads_is_read_to_the_end():
    data = png(40, 30, 0)
    stream = Trickle(data)
    assert not stream.seekable()
    assert (to_uint8(stream, SPEC) == to_uint8(data, SPEC)).all()
    assert stream.calls > len(data) // 7


def test_a_trickling_stream_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_STREAM_BYTES", 100)
    stream = Trickle(b"\0" * 1000)
    with pytest.raises(FastadaptError, match="file object: more than"):
        to_uint8(stream, SPEC)
    assert len(stream.data) == 1000 - 101  # stops just past the limit


def test_an_async_upload_is_refused_with_what_to_pass_instead():
    class AsyncUpload:  # starlette / FastAPI UploadFile: read is a coroutine function
        filename = "star.png"
        called = False

        async def read(self, size: int = -1) -> bytes:
            AsyncUpload.called = True
            return b""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FastadaptError) as info:
            to_uint8(AsyncUpload(), SPEC)
        gc.collect()  # an un-awaited coroutine would warn (RuntimeWarning) when collected
    message = str(info.value)
    assert "\n" not in message and "await upload.read()" in message and "upload.file" in message
    assert not AsyncUpload.called and not caught


def test_onnxruntime_telemetry_is_off_unless_the_program_chose(tmp_path):
    """fastadapt sets ORT_DISABLE_TELEMETRY=1 before it imports onnxruntime (a device SDK does
    not opt its users in), and leaves a value the program set itself. A fresh process: onnxruntime is imported
    once per process."""
    import subprocess
    import sys

    import fastadapt

    code = ("import os, fastadapt; fastadapt.load(); print(os.environ.get('ORT_DISABLE_TELEMETRY'))")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(fastadapt.__file__)))  # this fastadapt
    for preset, expected in ((None, "1"), ("0", "0")):
        run_env = env if preset is None else {**env, "ORT_DISABLE_TELEMETRY": preset}
        done = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected
