"""Signing edge cases found in a hostile-input review: --out over the key pair, an empty trusted-key list,
keygen interrupted while writing, re-signing a bundle whose signatures are malformed or stale, the
signature limit, describe() after the file changed, and error messages naming --trusted-key. Each runs
the shipped characters model (no torch)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import fastadapt
from conftest import ROOT, rewrite_manifest
from fastadapt import signing
from fastadapt.errors import FastadaptError
from sample_data import REPO
from test_cli_runtime import run_cli  # the one in-process CLI runner
from test_outputs import one_error

EXAMPLES = REPO / "examples"
DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"  # the shipped characters model (a meta bundle)
STAR = str(EXAMPLES / "queries" / "star" / "star_1.png")

pytestmark = pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")


@pytest.fixture(autouse=True)
def no_trusted_keys(monkeypatch):
    monkeypatch.delenv(signing.ENV, raising=False)


@pytest.fixture
def bundle(tmp_path) -> str:
    """A copy of the shipped model: signing writes to it."""
    path = tmp_path / "ad.fadapt"
    shutil.copyfile(DEFAULT, path)
    return str(path)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory) -> str:
    """The shipped model adapted to the example shapes, unsigned."""
    path = tmp_path_factory.mktemp("signing") / "adapted.fadapt"
    fastadapt.load().adapt(str(EXAMPLES / "shots")).save(str(path))
    return str(path)


def key_file(folder, secret: bytes) -> str:
    """A private key file holding ``secret``, as 'fastadapt keygen' writes it."""
    path = os.path.join(folder, f"key-{secret[:4].hex()}")
    with open(path, "w") as f:
        f.write(f"{signing.PRIVATE_HEADER} {secret.hex()}\n")
    return path


def signature_lines(path) -> list:
    with zipfile.ZipFile(path) as archive:
        return archive.read(signing.SIGNATURES).decode().split("\n")[:-1]


def with_signature_member(src, dst, data: bytes) -> str:
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[signing.SIGNATURES] = data
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, member in members.items():
            archive.writestr(name, member)
    return str(dst)


def signature_row(text: str) -> list:
    return [line for line in text.splitlines() if line.strip().startswith("signature ")]


# --- 1. sign --out never over the key pair ----------------------------------------------------------------

@pytest.mark.parametrize("target", ["k1", "k1.pub"])
def test_sign_out_may_not_be_the_key_or_its_pub(bundle, tmp_path, capsys, target):
    key = tmp_path / "k1"
    assert run_cli(capsys, "keygen", "--out", key)[0] == 0
    before = (tmp_path / target).read_bytes()
    code, out, err = run_cli(capsys, "sign", bundle, "--key", key, "--out", tmp_path / target)
    one_error(code, out, err, "--out", target, "also an input")
    assert (tmp_path / target).read_bytes() == before
    assert signing.read_private_key(str(key))  # still a key


def test_sign_out_may_still_be_the_model_itself(bundle, tmp_path, capsys):
    key = tmp_path / "k1"
    assert run_cli(capsys, "keygen", "--out", key)[0] == 0
    public = (tmp_path / "k1.pub").read_text().strip()
    code, out, err = run_cli(capsys, "sign", bundle, "--key", key, "--out", bundle)
    assert code == 0, err
    assert fastadapt.load(bundle, trusted_keys=[public]).bundle.signed_by == public


# --- 2. an empty trusted-key list is refused, not read as "no check" --------------------------------------

@pytest.mark.parametrize("value", ["", ",", " "])
def test_an_empty_trusted_keys_variable_is_refused(adapted, capsys, monkeypatch, value):
    monkeypatch.setenv(signing.ENV, value)
    code, out, err = run_cli(capsys, "predict", "--model", adapted, STAR)
    one_error(code, out, err, "FASTADAPT_TRUSTED_KEYS is set but names no key", "unset it", "fastadapt keygen")


@pytest.mark.parametrize("keys", [[], (), "", " , "])
def test_an_empty_trusted_keys_argument_is_refused(adapted, keys):
    with pytest.raises(FastadaptError, match="^trusted_keys is given but names no key; leave it out"):
        fastadapt.load(adapted, trusted_keys=keys)
    assert fastadapt.load(adapted, trusted_keys=None).kind == "adapted"  # None: no check, as before


# --- 3. keygen writes all or nothing ----------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix" or shutil.which("bash") is None, reason="needs bash's ulimit")
def test_keygen_that_cannot_write_leaves_nothing_and_can_be_retried(tmp_path):
    command = f"ulimit -f 0; exec {sys.executable} -m fastadapt keygen --out k2"  # every write: EFBIG
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ROOT})
    one_error(result.returncode, result.stdout, result.stderr, "k2", "cannot write", "nothing was written")
    assert os.listdir(tmp_path) == []  # no empty k2 blocking the retry, no temp file
    result = subprocess.run([sys.executable, "-m", "fastadapt", "keygen", "--out", "k2"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["k2", "k2.pub"]
    assert os.stat(tmp_path / "k2").st_mode & 0o777 == 0o600


def test_keygen_whose_pub_cannot_be_written_leaves_no_private_key(tmp_path, capsys, monkeypatch):
    link = os.link

    def no_space_for_pub(src, dst, *args, **kwargs):
        if str(dst).endswith(".pub"):
            raise OSError(28, "No space left on device")
        return link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", no_space_for_pub)
    code, out, err = run_cli(capsys, "keygen", "--out", tmp_path / "k3")
    one_error(code, out, err, "k3.pub", "No space left on device", "nothing was written")
    assert os.listdir(tmp_path) == []


def test_keygen_works_where_the_file_system_has_no_hard_links(tmp_path, capsys, monkeypatch):
    """FAT and exFAT (a USB stick) refuse link(); keygen falls back to an exclusive create."""
    def no_links(src, dst, *args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    code, out, err = run_cli(capsys, "keygen", "--out", tmp_path / "k4")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["k4", "k4.pub"]
    public = (tmp_path / "k4.pub").read_text().strip()
    assert signing.public_key(signing.read_private_key(tmp_path / "k4")).hex() == public
    code, out, err = run_cli(capsys, "keygen", "--out", tmp_path / "k4")
    one_error(code, out, err, "k4", "already exists")


# --- 4. re-signing drops malformed and stale signatures ---------------------------------------------------

@pytest.mark.parametrize("member", [b"\x1b[31m garbage", "ed25519 caf\u00e9".encode(), b"ed25519 00 00\n"])
def test_a_malformed_signature_member_is_dropped_when_signing_again(bundle, tmp_path, capsys, member):
    bad = with_signature_member(bundle, tmp_path / "badsig.fadapt", member)
    key = tmp_path / "k9"
    assert run_cli(capsys, "keygen", "--out", key)[0] == 0
    public = (tmp_path / "k9.pub").read_text().strip()
    code, out, err = run_cli(capsys, "sign", bad, "--key", key)
    assert code == 0, err
    assert "warning: " in err and "dropped its malformed signature.ed25519" in err
    assert fastadapt.load(bad, trusted_keys=[public]).bundle.signed_by == public
    assert len(signature_lines(bad)) == 1


def test_signing_an_edited_bundle_drops_the_signatures_it_no_longer_matches(bundle, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    for key in (first, second):
        assert run_cli(capsys, "keygen", "--out", key)[0] == 0
    old, new = ((tmp_path / f"{key}.pub").read_text().strip() for key in ("first", "second"))
    assert run_cli(capsys, "sign", bundle, "--key", first)[0] == 0
    edited = tmp_path / "edited.fadapt"
    rewrite_manifest(bundle, str(edited), provenance={"note": "edited after signing"})  # keeps the signature
    signed = tmp_path / "signed.fadapt"
    code, out, err = run_cli(capsys, "sign", edited, "--key", second, "--out", signed)
    assert code == 0, err
    assert f"dropped the signature(s) by {old[:16]}..." in err
    assert "unsigned" not in err and "(the original" in err and "is unchanged)" in err  # edited.fadapt is signed
    code, out, err = run_cli(capsys, "info", signed)
    assert code == 0, err
    assert [row.split() for row in signature_row(out)] == [["signature", new, "(valid)"]]  # no INVALID left


# --- 5. the signature limit -------------------------------------------------------------------------------

def test_a_signature_beyond_the_limit_is_refused_not_dropping_the_oldest(bundle, tmp_path, capsys):
    with zipfile.ZipFile(bundle) as archive:
        message = signing.bundle_message(archive.read("manifest.json"))
    secrets = [bytes([i + 1]) * 32 for i in range(signing.MAX_SIGNATURES)]
    lines = [f"ed25519 {signing.public_key(s).hex()} {signing.sign(s, message).hex()}\n" for s in secrets]
    full = with_signature_member(bundle, tmp_path / "full.fadapt", "".join(lines).encode())
    before = open(full, "rb").read()
    code, out, err = run_cli(capsys, "sign", full, "--key", key_file(tmp_path, b"\x77" * 32))
    one_error(code, out, err, "full.fadapt", f"{signing.MAX_SIGNATURES} signatures", "unsigned copy")
    assert open(full, "rb").read() == before
    # the first signer signing again replaces its own entry: still 16, all valid, none lost
    code, out, err = run_cli(capsys, "sign", full, "--key", key_file(tmp_path, secrets[0]))
    assert code == 0, err
    assert sorted(signature_lines(full)) == sorted(line.strip() for line in lines)
    first = signing.public_key(secrets[0]).hex()
    assert fastadapt.load(full, trusted_keys=[first]).bundle.signed_by == first


# --- 6. describe() describes what was read, never the file as it is now -----------------------------------

def test_describe_does_not_reopen_a_file_that_was_replaced(bundle, tmp_path):
    model = fastadapt.load(bundle)
    text = model.describe()
    with open(bundle, "w") as f:
        f.write("x")
    assert model.describe() == text  # no BadZipFile, and the size as read
    assert " MB, " in text


def test_describe_of_an_unsigned_model_ignores_a_signed_file_copied_over_it(bundle, tmp_path, capsys):
    unsigned = fastadapt.load(bundle)
    assert signature_row(unsigned.describe()) == []
    signed = tmp_path / "signed.fadapt"
    assert run_cli(capsys, "sign", bundle, "--key", key_file(tmp_path, b"\x05" * 32), "--out", signed)[0] == 0
    shutil.copyfile(signed, bundle)
    assert signature_row(unsigned.describe()) == []
    loaded = fastadapt.load(signed)
    os.remove(signed)
    assert signature_row(loaded.describe())[0].endswith("(valid)")  # verified from what was read
    assert signature_row(loaded.adapt(str(EXAMPLES / "shots"), steps=0).describe()) == []  # in memory: unsigned


# --- 7. a bad key names the flag in the CLI, the parameter in Python --------------------------------------

def test_a_bad_trusted_key_names_the_flag_or_the_parameter(adapted, capsys):
    code, out, err = run_cli(capsys, "predict", "--model", adapted, STAR, "--trusted-key", "abc")
    line = one_error(code, out, err, "'abc' is not an Ed25519 public key")
    assert line.startswith("error: --trusted-key: ")
    with pytest.raises(FastadaptError, match="^trusted_keys: 'abc' is not an Ed25519 public key"):
        fastadapt.load(adapted, trusted_keys=["abc"])
    code, out, err = run_cli(capsys, "predict", "--model", adapted, STAR, "--trusted-key", "a" * 64, "--trusted-key", "")
    assert one_error(code, out, err, "'' is not an Ed25519 public key").startswith("error: --trusted-key: ")


# --- 8. a trusted key in another spelling is the same key -----------------------------------------------------

def test_a_trusted_key_counts_in_upper_case_hex_or_as_raw_bytes(bundle):
    """Keys are compared in lower-case hex (the form a signature member holds): a key pasted in upper case, or
    given as its 32 raw bytes, is the same key, so the bundle it signed is accepted."""
    secret = bytes(range(1, 33))
    public = signing.sign_bundle(bundle, secret)
    for key in (public.upper(), bytes.fromhex(public)):
        assert fastadapt.load(bundle, trusted_keys=[key]).bundle.signed_by == public
        assert fastadapt.load(bundle, trusted_keys=key if isinstance(key, str) else [key]).bundle.signed_by == public

