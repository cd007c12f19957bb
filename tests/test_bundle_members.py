"""A bundle holds the members fastadapt writes and nothing else (finding 7 of review 8b): an extra member, or bytes
before or after the zip, were put there after writing, and checksums and signatures (which cover only the listed
members) would not notice them, while a device that unzips or forwards a verified bundle carries them."""

from __future__ import annotations

import zipfile

import pytest

import fastadapt
from fastadapt import signing
from fastadapt.bundle import read_bundle
from fastadapt.errors import FastadaptError
from sample_data import REPO
from test_bundle_hardening import members_of, write_zip

CHANGED = "the bundle was changed after it was written"


@pytest.fixture(scope="module")
def signed(bundles, tmp_path_factory):
    """(path, trusted key): the meta bundle, signed."""
    folder = tmp_path_factory.mktemp("signed")
    signing.write_private_key(str(folder / "key"))
    path = folder / "signed.fadapt"
    path.write_bytes(open(bundles["zero"], "rb").read())
    return str(path), signing.sign_bundle(str(path), signing.read_private_key(str(folder / "key")))


def refused(path, match, **kwargs) -> str:
    with pytest.raises(FastadaptError, match=match) as error:
        read_bundle(str(path), **kwargs)
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("name", ["payload.sh", "../../evil.onnx", "forward.onnx.bak", "\x1b[2Jx"])
def test_an_extra_member_is_refused_signed_or_not(signed, tmp_path, name):
    path, key = signed
    members = members_of(path)
    assert signing.SIGNATURES in members
    members[name] = b"#!/bin/sh\n"
    extra = tmp_path / "extra.fadapt"
    write_zip(extra, members)
    message = refused(extra, CHANGED, trusted_keys=[key])
    assert "\x1b" not in message
    refused(extra, CHANGED)  # without a trusted key too: fastadapt never writes such a bundle
    del members[signing.SIGNATURES]
    write_zip(extra, members)
    refused(extra, CHANGED)


def test_an_optional_member_the_manifest_does_not_list_is_refused(bundles, tmp_path):
    members = members_of(bundles["zero"])  # a meta bundle: its manifest lists no stored shots
    members["shots.npz"] = b"PK"
    path = tmp_path / "shots.fadapt"
    write_zip(path, members)
    assert "'shots.npz'" in refused(path, CHANGED)


def test_bytes_before_or_after_the_zip_are_refused(signed, tmp_path):
    path, key = signed
    data = open(path, "rb").read()
    prepended = tmp_path / "prepended.fadapt"
    prepended.write_bytes(b"#!/bin/sh\necho hi\nexit 0\n" + data)  # a shell script and zip in one file
    assert "25 bytes precede" in refused(prepended, CHANGED, trusted_keys=[key])
    appended = tmp_path / "appended.fadapt"
    appended.write_bytes(data + b"junk")
    assert "4 bytes follow" in refused(appended, CHANGED, trusted_keys=[key])


def test_what_fastadapt_writes_still_reads(signed, tmp_path):
    """Signed, reordered, and adapted with its optional members: all read."""
    path, key = signed
    assert read_bundle(path, trusted_keys=[key]).signed_by == key
    reordered = tmp_path / "reordered.fadapt"
    write_zip(reordered, dict(reversed(list(members_of(path).items()))))
    assert read_bundle(str(reordered), trusted_keys=[key]).signed_by == key
    adapted = tmp_path / "adapted.fadapt"
    fastadapt.load().adapt(str(REPO / "examples" / "shots")).save(str(adapted))
    with zipfile.ZipFile(adapted) as archive:
        assert {"meta_params.npz", "shots.npz"} <= set(archive.namelist())
    assert read_bundle(str(adapted)).shots is not None


def test_a_member_exactly_at_its_size_limit_is_read_and_one_byte_more_is_not(bundles, tmp_path):
    """MEMBER_LIMITS is the most a member may hold: at the limit it is read, past it refused (an off-by-one
    would refuse a bundle the format allows). The checksum member's limit is small enough to reach: its
    SHA-256 padded with whitespace, which the reader strips."""
    from fastadapt.bundle import MANIFEST_CHECKSUM, MEMBER_LIMITS

    members = members_of(bundles["zero"])
    limit = MEMBER_LIMITS[MANIFEST_CHECKSUM]
    for size, ok in ((limit, True), (limit + 1, False)):
        members[MANIFEST_CHECKSUM] = members[MANIFEST_CHECKSUM].strip().ljust(size)
        path = tmp_path / f"padded-{size}.fadapt"
        write_zip(path, members)
        if ok:
            assert read_bundle(str(path)).manifest["members"] == read_bundle(bundles["zero"]).manifest["members"]
        else:
            assert f"{limit + 1:,}" in refused(path, MANIFEST_CHECKSUM)


def test_a_member_that_appears_twice_is_refused(bundles, tmp_path):
    """Guards against reading one of two same-named entries: checksums would hold for the one fastadapt reads
    (zipfile's: the last) while a tool that unzips the bundle may take the other (here junk, before it; not
    the zip's first entry, which the check for prepended bytes would notice instead)."""
    import warnings

    members = members_of(bundles["zero"])
    path = tmp_path / "twice.fadapt"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: that is the point here
        archive.writestr("manifest.json", members.pop("manifest.json"))
        archive.writestr("forward.onnx", b"junk")
        for name, data in members.items():
            archive.writestr(name, data)
    refused(path, "forward.onnx")
