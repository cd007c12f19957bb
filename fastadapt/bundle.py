"""The ``.fadapt`` bundle: one zip file, a JSON manifest, two ONNX graphs and .npz parameters. No pickle.

Members
  manifest.json  see below
  forward.onnx   inputs:  "images" float32 (B, C, H, W), then one input per parameter, named exactly
                          as in manifest["parameters"] (head.weight has a dynamic number of rows)
                 outputs: "logits" float32 (B, N), "features" float32 (B, D)
  step.onnx      one complete SGD step (forward, loss, backward, update) on the adapted parameters
                 inputs:  "images" float32 (B, C, H, W), "labels" int64 (B,), "lr" float32 scalar,
                          then every parameter as in forward.onnx
                 outputs: "loss" float32 scalar, then "new.<name>" for each name in
                          manifest["inner_loop"]["adapted"]
  params.npz     the parameters (allow_pickle=False): meta-initialisation, or adapted weights with
                 the head filled in (kind "adapted")
  meta_params.npz  adapted bundles (optional, with shots.npz): the meta-initialisation they were adapted from,
                 float32 as params.npz, so classes can be added or removed (re-adapting from it)
  shots.npz      adapted bundles (optional, with meta_params.npz): the support set, as preprocessed at model
                 resolution: "images" uint8 (n, C, H, W), "labels" int64 (n,) (head rows, class by class)
  manifest.sha256  hex SHA-256 of manifest.json (the manifest holds the SHA-256 of the other members)
  signature.ed25519  optional (``fastadapt sign``): Ed25519 signatures over that SHA-256, see signing.py

Manifest keys
  format ("fastadapt-bundle"), format_version, kind ("meta" | "adapted"), architecture,
  preprocess (images.Preprocess.to_dict), parameters (ordered names), inner_loop (steps, lr, adapt,
  loss, head_init, head_scale, adapted), classes (adapted bundles: label names in head-row order), provenance,
  evaluation (list of results), model_card ({section: text}), members ({name: sha256}).
  manifest.validate_manifest checks them.

Bundles are byte-reproducible: members in a fixed order, with a fixed timestamp (1980-01-01) and mode
0644, and nothing in the manifest depends on the clock, so the same inputs give the same file.

Reading is bounded by the format, not by the machine: each member's size is checked against
MEMBER_LIMITS before it is read and again while reading, and every .npy header in params.npz is
checked (dtype, shape, size) before its array is allocated. The optional members are read only
when the manifest lists them (with their SHA-256), under the same checks. A bundle holds the members
above and nothing else, with no bytes before or after the zip: fastadapt never writes others, so any
are an edit made afterwards (which checksums and signatures, covering only the listed members, would miss).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from . import signing
from .errors import FastadaptError
from .manifest import COLOUR, FORMAT, FORMAT_VERSION, HEAD, MAX_MANIFEST_BYTES, MAX_PARAMETERS, MEMBERS, \
    OPTIONAL_MEMBERS, format_version_of, printable, validate_manifest
from .outputs import write_atomic  # noqa: F401  (re-exported: older imports use fastadapt.bundle.write_atomic)
from .onnx_wire import refuse_external_data

__all__ = ["Bundle", "read_bundle", "save_bundle", "FORMAT", "FORMAT_VERSION", "MEMBERS", "MEMBER_LIMITS"]

MANIFEST_CHECKSUM = "manifest.sha256"  # SHA-256 of manifest.json, so an edited manifest is caught too
MiB = 1 << 20
# Most bytes each member may hold. The shipped width-64 Conv4 needs 43 KB (forward.onnx), 478 KB
# (step.onnx) and 452 KB (params.npz): 256 MiB leaves room for models several hundred times larger,
# while a crafted bundle (a "zip bomb" declaring gigabytes) is refused before anything is allocated.
MEMBER_LIMITS = {"manifest.json": MAX_MANIFEST_BYTES, MANIFEST_CHECKSUM: 1024, signing.SIGNATURES: 64 * 1024,
                 "forward.onnx": 256 * MiB, "step.onnx": 256 * MiB, "params.npz": 256 * MiB,
                 # the stored support set: 20-way 5-shot at 28x28 is 79 KB, 1,000 shots at 84x84 RGB 21 MB
                 "meta_params.npz": 256 * MiB, "shots.npz": 64 * MiB}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: bundles never depend on the clock
ZIP_MODE = 0o100644 << 16  # a regular file, -rw-r--r-- when unzipped (external attributes, Unix)
READ_PIECE = 1 << 20  # bytes decompressed at a time
MAX_MEMBERS = 64  # zip entries; a bundle has 5 or 6
MAX_DIRECTORY_BYTES = 1 << 20  # the zip's central directory: 46 bytes and a name per entry
# Only these: zipfile decompresses bzip2 and LZMA without an output bound, so a member declaring a few
# bytes could still inflate to gigabytes in one read. The exporter (and np.savez) use these two.
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
MAX_DIMS = 4  # a parameter's dimensions (conv weights have 4)
# What a damaged or crafted zip can raise from the zipfile/zlib/struct internals
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, struct.error, NotImplementedError,
              RuntimeError, ValueError, OverflowError, OSError, IndexError, KeyError)


@dataclass
class Bundle:
    manifest: dict
    forward_onnx: bytes
    step_onnx: bytes
    params: dict  # name -> np.ndarray (float32)
    path: str | None = None
    signed_by: str | None = None  # hex public key whose signature was verified (when trusted keys were required)
    meta_params: dict | None = None  # adapted bundles: the meta-initialisation (meta_params.npz)
    shots: dict | None = None  # adapted bundles: {"images": uint8 (n, C, H, W), "labels": int64 (n,)} (shots.npz)
    # as read by read_bundle (None for a bundle made in memory), so describing it never reopens the file,
    # which may have been replaced since: the signature member and the manifest bytes it signs, the file size
    signatures: bytes | None = None
    manifest_bytes: bytes | None = None
    size: int | None = None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_bytes(members: dict, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """{name: bytes} -> a zip whose bytes depend on nothing else (fixed time and mode, the given order)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type, info.external_attr, info.create_system = compression, ZIP_MODE, 3  # 3: Unix
            archive.writestr(info, data)
    return buffer.getvalue()


def arrays_to_bytes(arrays: dict) -> bytes:
    """{name: array} -> .npz bytes as np.savez writes them (stored .npy members), reproducibly."""
    members = {}
    for name, array in arrays.items():
        npy = io.BytesIO()
        np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
        members[f"{name}.npy"] = npy.getvalue()
    return zip_bytes(members, zipfile.ZIP_STORED)


def params_to_bytes(params: dict) -> bytes:
    return arrays_to_bytes({k: np.asarray(v, dtype=np.float32) for k, v in params.items()})


FLOAT32 = np.dtype(np.float32)


def _read_array(f, size: int, name: str, want: np.dtype = FLOAT32) -> np.ndarray:
    """One .npy member: header first (dtype, shape, size checked), then exactly its bytes."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"{name}: unsupported .npy version {version}")
    if dtype.kind != want.kind or dtype.itemsize != want.itemsize or dtype.fields is not None \
            or dtype.subdtype is not None:
        raise ValueError(f"{name} has dtype {dtype}, not {want}")
    if len(shape) > MAX_DIMS:
        raise ValueError(f"{name} has {len(shape)} dimensions (at most {MAX_DIMS})")
    nbytes = math.prod(shape) * want.itemsize
    if nbytes != size - f.tell():  # also bounds it: size was checked against the member limit
        raise ValueError(f"{name} declares shape {shape} ({nbytes:,} bytes) but holds {size - f.tell():,}")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{name} is truncated")
    array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    array = np.array(array, dtype=want, order="C")  # a writable, native-order copy, as np.load gives
    if want.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def params_from_bytes(data: bytes, where: str, member: str = "params.npz", dtypes: dict | None = None) -> dict:
    """An .npz member -> {name: array}, without pickle and without trusting any declared size. Every
    array is float32, or with ``dtypes`` ({name: dtype}) exactly those arrays with those dtypes."""
    where = printable(where)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as npz:
            infos = npz.infolist()
            if len(infos) > MAX_PARAMETERS:
                raise ValueError(f"{len(infos)} arrays (at most {MAX_PARAMETERS})")
            if sum(i.file_size for i in infos) > MEMBER_LIMITS[member]:
                raise ValueError(f"its arrays declare more than {MEMBER_LIMITS[member]:,} bytes")
            params = {}
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else ""
                if not name or name in params or info.compress_type not in COMPRESSIONS or \
                        (dtypes is not None and name not in dtypes):
                    raise ValueError(f"unexpected member '{printable(info.filename)[:80]}'")
                with npz.open(info) as f:
                    want = FLOAT32 if dtypes is None else np.dtype(dtypes[name])
                    params[name] = _read_array(f, info.file_size, printable(name)[:80], want)
            if dtypes is not None and set(params) != set(dtypes):
                raise ValueError(f"it lacks {', '.join(sorted(set(dtypes) - set(params)))}")
            return params
    except ZIP_ERRORS + (TypeError,) as exc:
        raise FastadaptError(f"{where}: {member} is corrupt ({printable(exc)[:200]}); re-export the bundle") from None


def save_bundle(path: str, bundle: Bundle) -> None:
    members = {"forward.onnx": bundle.forward_onnx, "step.onnx": bundle.step_onnx,
               "params.npz": params_to_bytes(bundle.params)}
    if bundle.meta_params is not None and bundle.shots is not None:
        members["meta_params.npz"] = params_to_bytes(bundle.meta_params)
        members["shots.npz"] = arrays_to_bytes({"images": np.asarray(bundle.shots["images"], np.uint8),
                                                "labels": np.asarray(bundle.shots["labels"], "<i8")})
    manifest = dict(bundle.manifest)
    manifest["format"], manifest["format_version"] = FORMAT, format_version_of(manifest)
    manifest["parameters"] = list(bundle.params)
    manifest["members"] = {name: sha256(data) for name, data in members.items()}
    # never write a bundle that read_bundle would refuse (e.g. a 300-character class name)
    unreadable = "this fastadapt could not read such a bundle back, so nothing was written"
    validate_manifest(manifest, os.fspath(path), unreadable)
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=False).encode()
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise FastadaptError(f"{printable(os.fspath(path))}: the manifest would take {len(manifest_bytes):,} bytes "
                             f"(at most {MAX_MANIFEST_BYTES:,}: fewer or shorter class names); {unreadable}")
    optional = {name: data for name, data in members.items() if name in OPTIONAL_MEMBERS}
    if optional:
        _check_optional(manifest, bundle.params, bundle.meta_params, bundle.shots, f"{printable(os.fspath(path))}",
                        unreadable)
    write_atomic(path, zip_bytes({"manifest.json": manifest_bytes,
                                  MANIFEST_CHECKSUM: sha256(manifest_bytes).encode(), **members}))
    bundle.manifest = manifest


def _open_regular(path) -> tuple:
    """(path as str, open binary file) for a regular file; anything else is a one-line FastadaptError.

    Opened without blocking and checked with fstat, so a FIFO or device named like a bundle is refused
    instead of hanging the reader (and cannot be swapped in between a check and the open)."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        raise FastadaptError("a model is the path of a .fadapt file (str or pathlib.Path), not bytes")
    try:
        path = os.fspath(path)
    except TypeError:
        raise FastadaptError(f"a model is the path of a .fadapt file (str or pathlib.Path), got "
                             f"{type(path).__name__}") from None
    if not isinstance(path, str) or not path:
        raise FastadaptError("a model is the path of a .fadapt file; got an empty or non-text path")
    where = printable(path)
    if not os.path.exists(path):
        raise FastadaptError(f"{where}: no such model file; pass a .fadapt bundle made by 'fastadapt export' or 'fastadapt adapt'")
    if os.path.isdir(path):
        run = os.path.exists(os.path.join(path, "config.json"))  # a training run's folder: export makes its bundle
        raise FastadaptError(f"{where}: is a folder, not a .fadapt bundle"
                             + (f" (a training run: make its bundle with 'fastadapt export {where}')" if run else
                                "; pass a .fadapt file made by 'fastadapt export' or 'fastadapt adapt'"))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as exc:
        raise FastadaptError(f"{where}: cannot open the model file ({getattr(exc, 'strerror', None) or exc}); "
                             f"check its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FastadaptError(f"{where}: is not a regular file (a FIFO, device or socket); pass a .fadapt bundle file")
    return path, os.fdopen(fd, "rb")


def _check_directory(file, where: str) -> None:
    """Bound the zip's central directory before zipfile parses it into one object per entry (a crafted
    directory of millions of entries would otherwise cost gigabytes): at most MAX_DIRECTORY_BYTES, and
    no zip64, which a bundle never needs; and nothing after it (zipfile would ignore such bytes). Reads the
    end-of-central-directory record as zipfile will."""
    size = os.fstat(file.fileno()).st_size
    tail = min(size, 20 + 22 + 65535)  # a zip64 locator (20 bytes), the record (22) and the longest comment
    file.seek(size - tail)
    data = file.read(tail)
    file.seek(0)
    # as zipfile: a record without comment at the very end, else the last signature before it
    at = len(data) - 22 if data[-22:-18] == b"PK\x05\x06" and data[-2:] == b"\0\0" else data.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(data):
        return  # not a zip at all: zipfile says so
    if at + 22 != len(data):  # fastadapt writes no zip comment: these bytes were added to the file
        raise FastadaptError(f"{where}: {len(data) - at - 22:,} bytes follow its zip data (appended or a zip comment, "
                             f"which fastadapt never writes); {CHANGED}")
    directory = struct.unpack_from("<I", data, at + 12)[0]
    if data[max(0, at - 20):at - 16] == b"PK\x06\x07":
        raise FastadaptError(f"{where}: is a zip64 archive, which a bundle (far below 4 GB) never is; refused as "
                             f"damaged or crafted, re-export it")
    if directory > MAX_DIRECTORY_BYTES:
        raise FastadaptError(f"{where}: its zip directory is too large ({directory:,} bytes, a bundle's is under "
                             f"1 KB); refused as damaged or crafted, re-export it")


# fastadapt writes bundles whole (save_bundle, sign_bundle): anything else in the file was put there afterwards
CHANGED = "the bundle was changed after it was written, re-export or re-download it"


def _refuse_unknown_members(infos: dict, manifest: dict, where: str) -> None:
    """Only the members fastadapt writes: readers skip others, but a device that unzips or forwards a verified
    bundle would carry them (even one named ../../evil.onnx). An optional member must be in the manifest."""
    known = {"manifest.json", MANIFEST_CHECKSUM, signing.SIGNATURES, *MEMBERS,
             *(name for name in OPTIONAL_MEMBERS if name in manifest["members"])}
    for name in infos:
        if name not in known:
            raise FastadaptError(f"{where}: holds member '{printable(name)[:80]}', which fastadapt never writes "
                                 f"there; {CHANGED}")


def _read_member(archive: zipfile.ZipFile, infos: dict, name: str, where: str) -> bytes:
    info = infos.get(name)
    if info is None:
        raise FastadaptError(f"{where}: member {name} is missing; the bundle is truncated, re-export it")
    return read_bounded(archive, info, MEMBER_LIMITS[name], f"{where}: member {name}", "a bundle may hold",
                        "refused as damaged or crafted (a zip bomb), re-export it")


def read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str, holder: str, fix: str) -> bytes:
    """A zip member's bytes (bundles, and image zips given as --data): refused before reading when it
    declares more than ``limit`` or uses a compression with no output bound (bzip2, LZMA), and stopped
    once the limit is passed (zipfile also stops at the declared size, whose CRC then fails). ``what``
    names the member in messages, ``holder`` says whose limit it is, ``fix`` ends them."""
    if info.compress_type not in COMPRESSIONS:
        raise FastadaptError(f"{what} uses zip compression method {info.compress_type}, not deflate; {fix}")
    if info.file_size > limit:
        raise FastadaptError(f"{what} declares {info.file_size:,} bytes, more than {holder} ({limit:,}); {fix}")
    chunks, total = [], 0
    with archive.open(info) as f:
        # in pieces, so even a member whose declared size lies never inflates more than a piece at once
        while chunk := f.read(min(READ_PIECE, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FastadaptError(f"{what} holds more than {limit:,} bytes; {fix}")
    return b"".join(chunks)


def _parse_manifest(data: bytes, where: str):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FastadaptError(f"{where}: manifest.json is not UTF-8 text; the bundle is corrupt, re-export it") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise FastadaptError(f"{where}: manifest.json is nested too deeply; the bundle is corrupt, re-export it") from None
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise FastadaptError(f"{where}: manifest.json is not valid JSON ({printable(exc)[:120]}); the bundle is "
                             f"corrupt, re-export it") from None


def read_bundle(path, trusted_keys=None, check_trust: bool = True) -> Bundle:
    """Read and verify a bundle: format, version, manifest fields, sizes, the SHA-256 of every member
    and the parameters' shapes. ``trusted_keys`` (hex Ed25519 public keys), with those in the
    FASTADAPT_TRUSTED_KEYS environment variable: when any are given, a valid signature by one of
    them is required (``check_trust=False`` skips that, for ``fastadapt sign``)."""
    keys = signing.trusted_keys(trusted_keys) if check_trust else set()  # first: a refused key leaves no file open
    path, file = _open_regular(path)
    where = printable(path)
    size = os.fstat(file.fileno()).st_size
    try:
        with file:
            _check_directory(file, where)
            with zipfile.ZipFile(file) as archive:
                infos = {}
                for info in archive.infolist()[:MAX_MEMBERS + 1]:
                    if info.filename in infos:
                        raise FastadaptError(f"{where}: member {printable(info.filename)[:80]} appears twice; refused as "
                                             f"crafted, re-export the bundle")
                    infos[info.filename] = info
                if len(infos) > MAX_MEMBERS:
                    raise FastadaptError(f"{where}: more than {MAX_MEMBERS} members; not a fastadapt bundle")
                first = min((info.header_offset for info in infos.values()), default=0)
                if first:  # zipfile skips bytes put before the zip (a script, say); a bundle starts with its first member
                    raise FastadaptError(f"{where}: {first:,} bytes precede its zip data (prepended); {CHANGED}")
                if "manifest.json" not in infos:
                    raise FastadaptError(f"{where}: not a fastadapt bundle (no manifest.json)")
                manifest_bytes = _read_member(archive, infos, "manifest.json", where)
                if MANIFEST_CHECKSUM not in infos or \
                        _read_member(archive, infos, MANIFEST_CHECKSUM, where).strip() != sha256(manifest_bytes).encode():
                    raise FastadaptError(f"{where}: checksum mismatch in manifest.json; the bundle is corrupt or was "
                                         f"modified, re-export or re-download it")
                signatures = _read_member(archive, infos, signing.SIGNATURES, where) if signing.SIGNATURES in infos else None
                signed_by = signing.check(manifest_bytes, signatures, keys, where) if keys else None
                manifest = validate_manifest(_parse_manifest(manifest_bytes, where), where)
                _refuse_unknown_members(infos, manifest, where)
                data = {}
                for name in MEMBERS + tuple(n for n in OPTIONAL_MEMBERS if n in manifest["members"]):
                    data[name] = _read_member(archive, infos, name, where)
                    if sha256(data[name]) != manifest["members"][name]:
                        raise FastadaptError(f"{where}: checksum mismatch in {name}; the bundle is corrupt or was "
                                             f"modified, re-export or re-download it")
    except ZIP_ERRORS as exc:
        raise FastadaptError(f"{where}: not a readable bundle ({exc.__class__.__name__}: truncated, damaged or "
                             f"not a zip); re-export it") from None
    for graph in ("forward.onnx", "step.onnx"):
        refuse_external_data(data[graph], f"{where} ({graph})")
    params = params_from_bytes(data["params.npz"], path)
    _check_params(params, manifest, where)
    meta_params = shots = None
    if "shots.npz" in data:  # validate_manifest saw to it that both optional members are listed, or neither
        meta_params = params_from_bytes(data["meta_params.npz"], path, "meta_params.npz")
        shots = params_from_bytes(data["shots.npz"], path, "shots.npz", SHOTS_DTYPES)
        _check_optional(manifest, params, meta_params, shots, where, "re-adapt it from the meta model")
    return Bundle(manifest, data["forward.onnx"], data["step.onnx"], params, path, signed_by, meta_params, shots,
                  signatures, manifest_bytes, size)


SHOTS_DTYPES = {"images": np.uint8, "labels": np.int64}


def _check_optional(manifest: dict, params: dict, meta_params: dict, shots: dict, where: str, fix: str) -> None:
    """An adapted bundle's meta-initialisation and support set agree with its parameters, classes and
    preprocessing, so re-adapting from them (``AdaptedModel.add_classes``) cannot fail half-way."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise FastadaptError(f"{where}: {what}; {fix}")

    need(manifest.get("kind") == "adapted", "only adapted bundles hold meta_params.npz and shots.npz")
    learned = manifest["inner_loop"].get("head_init", "zero") == "learned"
    expected = [name for name in params if (learned or name not in HEAD) and name not in COLOUR]
    need(list(meta_params) == expected, "meta_params.npz does not hold the parameters params.npz has")
    for name, value in meta_params.items():
        same = value.shape == params[name].shape if name not in HEAD else \
            value.ndim == params[name].ndim and value.shape[1:] == params[name].shape[1:]
        need(same, f"meta_params.npz's {printable(name)[:80]} has shape {value.shape}, not that of params.npz")
    images, labels = np.asarray(shots["images"]), np.asarray(shots["labels"])
    pre, classes = manifest["preprocess"], manifest["classes"]
    need(images.ndim == 4 and images.shape[1:] == (pre["channels"], pre["size"], pre["size"]),
         f"shots.npz's images have shape {images.shape}, not (n, {pre['channels']}, {pre['size']}, {pre['size']})")
    need(labels.shape == images.shape[:1], f"shots.npz has {len(labels)} labels for {len(images)} images")
    need(len(labels) > 0 and labels.min() >= 0 and labels.max() < len(classes) and
         (np.bincount(labels, minlength=len(classes)) > 0).all() and (np.diff(labels) >= 0).all(),
         f"shots.npz's labels are not class by class with every one of the {len(classes)} classes")


def _check_params(params: dict, manifest: dict, where: str) -> None:
    """The parameters agree with the manifest: same names in order, a consistent head."""
    if list(params) != manifest["parameters"]:
        raise FastadaptError(f"{where}: params.npz does not match the manifest's parameter list; re-export it")
    if "head.weight" not in params and "head.bias" not in params:
        return
    weight, bias = params.get("head.weight"), params.get("head.bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise FastadaptError(f"{where}: params.npz has an inconsistent head (head.weight "
                             f"{getattr(weight, 'shape', None)}, head.bias {getattr(bias, 'shape', None)}); re-export it")
    dim = (manifest.get("architecture") or {}).get("feature_dim")
    if dim is not None and weight.shape[1] != dim:
        raise FastadaptError(f"{where}: head.weight has {weight.shape[1]} columns but the architecture's feature_dim "
                             f"is {dim}; re-export it")
    if manifest.get("kind") == "adapted" and weight.shape[0] != len(manifest["classes"]):
        raise FastadaptError(f"{where}: adapted bundle has {len(manifest['classes'])} class names for "
                             f"{weight.shape[0]} head rows; re-run 'fastadapt adapt'")
    _check_colour_head(params, manifest, weight.shape[0], where)


def _check_colour_head(params: dict, manifest: dict, rows: int, where: str) -> None:
    """The colour head (runtime/colour.py), one row per class (validate_manifest saw to it that it is there
    exactly when manifest["colour"] is)."""
    cue = manifest.get("colour")
    if not cue:
        return
    weight, bias = params[COLOUR[0]], params[COLOUR[1]]
    if weight.shape != (rows, cue["bins"] ** 3) or bias.shape != (rows,):
        raise FastadaptError(f"{where}: the colour head has shapes {weight.shape} and {bias.shape}, not "
                             f"({rows}, {cue['bins'] ** 3}) and ({rows},); re-run 'fastadapt adapt'")
