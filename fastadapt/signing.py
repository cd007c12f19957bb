"""Optional bundle signatures: Ed25519 (RFC 8032) in pure Python, so authenticity needs no new dependency.

Checksums catch accidents, not edits: anyone who changes a member can recompute them. A signature
can only be made with the private key, so a device that requires one of its trusted public keys
(``fastadapt.load(path, trusted_keys=[hex])`` or FASTADAPT_TRUSTED_KEYS=hex,hex) refuses a bundle
that was edited after it was signed.

What is signed: the SHA-256 of manifest.json, which holds the SHA-256 of every other member, so the
signature covers the whole bundle. The member ``signature.ed25519`` holds one line per signature:
"ed25519 <public key hex> <signature hex>".

The arithmetic follows RFC 8032 section 5.1 (points in extended coordinates, section 5.1.4). Verifying
takes ~20-50 ms. Signing is not constant-time: sign on a machine you trust, not on a shared one.
Torch-free: part of the on-device runtime.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re

from .errors import FastadaptError, warn
from .manifest import printable

SIGNATURES = "signature.ed25519"  # the bundle member
ENV = "FASTADAPT_TRUSTED_KEYS"
DOMAIN = b"fastadapt-bundle-signature-v1\n"  # so a signature over a bundle means nothing anywhere else
MAX_SIGNATURES = 16
PRIVATE_HEADER = "fastadapt-ed25519-private-key"

# --- Ed25519, RFC 8032 section 5.1 -------------------------------------------------------------------
P = 2**255 - 19  # the field
L = 2**252 + 27742317777372353535851937790883648493  # the group order
D = -121665 * pow(121666, P - 2, P) % P  # the curve constant d
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1
IDENTITY = (0, 1, 1, 0)


def _add(p1: tuple, p2: tuple) -> tuple:
    """Point addition in extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z (5.1.4)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, d = 2 * t1 * t2 * D % P, 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _multiply(scalar: int, point: tuple) -> tuple:
    result = IDENTITY
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _same(p1: tuple, p2: tuple) -> bool:
    return (p1[0] * p2[2] - p2[0] * p1[2]) % P == 0 and (p1[1] * p2[2] - p2[1] * p1[2]) % P == 0


def _recover_x(y: int, sign: int):
    """x from y and the sign bit (5.1.3), None when there is no such point."""
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if (x & 1) != sign else x


_GY = 4 * pow(5, P - 2, P) % P
_GX = _recover_x(_GY, 0)
BASE = (_GX, _GY, 1, _GX * _GY % P)


def _encode(point: tuple) -> bytes:
    z_inv = pow(point[2], P - 2, P)
    x, y = point[0] * z_inv % P, point[1] * z_inv % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(data: bytes):
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def _hash_int(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _expand(secret: bytes) -> tuple:
    if len(secret) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes")
    digest = hashlib.sha512(secret).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar = (scalar & ((1 << 254) - 8)) | (1 << 254)  # clamp (5.1.5)
    return scalar, digest[32:]


def public_key(secret: bytes) -> bytes:
    return _encode(_multiply(_expand(secret)[0], BASE))


def sign(secret: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` (5.1.6)."""
    scalar, prefix = _expand(secret)
    public = _encode(_multiply(scalar, BASE))
    r = _hash_int(prefix, message) % L
    big_r = _encode(_multiply(r, BASE))
    s = (r + _hash_int(big_r, public, message) * scalar) % L
    return big_r + s.to_bytes(32, "little")


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public``'s signature of ``message`` (5.1.7)."""
    if len(public) != 32 or len(signature) != 64:
        return False
    point_a, point_r = _decode(public), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if point_a is None or point_r is None or s >= L:
        return False
    k = _hash_int(signature[:32], public, message) % L
    return _same(_multiply(s, BASE), _add(point_r, _multiply(k, point_a)))


# --- bundles -----------------------------------------------------------------------------------------
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def bundle_message(manifest_bytes: bytes) -> bytes:
    return DOMAIN + hashlib.sha256(manifest_bytes).hexdigest().encode()


def trusted_keys(keys=None) -> set:
    """Lower-case hex public keys from ``keys`` (a list, or one comma-separated string) and FASTADAPT_TRUSTED_KEYS.

    None (and the variable unset) means no check. Given but naming no key ([], "", " , ", an empty
    variable) is refused: read as "no key required", a typo would silently accept unsigned bundles."""
    found = set()
    for source, value in (("trusted_keys", keys), (ENV, os.environ.get(ENV))):
        if value is not None:
            found |= _keys_from(source, value)
    return found


def _keys_error(source: str, problem: str) -> FastadaptError:
    """``problem`` about the keys from ``source``: the variable, or the parameter (the CLI names its flag)."""
    if source == ENV:
        return FastadaptError(ENV + problem)
    return FastadaptError("{trusted_keys}" + problem, "trusted_keys")


def _keys_from(source: str, value) -> set:
    items = value.split(",") if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise _keys_error(source, f" must be a list of hex Ed25519 public keys, got {type(value).__name__}") from None
    found = set()
    for item in items:
        if isinstance(item, bytes) and len(item) == 32:
            item = item.hex()
        text = item.strip() if isinstance(item, str) else None
        if text == "" and isinstance(value, str):
            continue  # "a,,b" or a trailing comma
        if text is None or not _HEX_KEY.fullmatch(text):
            shown = repr(item)[:80].encode("unicode_escape").decode()
            raise _keys_error(source, f": {shown} is not an Ed25519 public key (64 hex digits, as printed by "
                                      f"'fastadapt keygen')")
        found.add(text.lower())
    if not found:
        fix = "is set but names no key; unset it" if source == ENV else "is given but names no key; leave it out"
        raise _keys_error(source, f" {fix} to accept unsigned bundles, or give Ed25519 public keys (hex, from "
                                  f"'fastadapt keygen')")
    return found


def parse_signatures(data: bytes, where: str) -> list:
    """[(public key hex, signature bytes)] from the signature member."""
    try:
        lines = data.decode("ascii").split()
    except UnicodeDecodeError:
        raise FastadaptError(f"{where}: {SIGNATURES} is not text; the signature is damaged, sign the bundle again") from None
    if len(lines) % 3 or len(lines) > 3 * MAX_SIGNATURES:
        raise FastadaptError(f"{where}: {SIGNATURES} is malformed; sign the bundle again")
    found = []
    for i in range(0, len(lines), 3):
        algorithm, key, signature = lines[i:i + 3]
        if algorithm != "ed25519" or not _HEX_KEY.fullmatch(key) or not re.fullmatch(r"[0-9a-fA-F]{128}", signature):
            raise FastadaptError(f"{where}: {SIGNATURES} is malformed; sign the bundle again")
        found.append((key.lower(), bytes.fromhex(signature)))
    return found


def check(manifest_bytes: bytes, signatures: bytes | None, keys: set, where: str) -> str:
    """The trusted key (hex) with a valid signature over the bundle, else a FastadaptError."""
    fix = f"sign it with 'fastadapt sign' and a trusted key, or change the trusted keys ({ENV} / trusted_keys)"
    found = parse_signatures(signatures, where) if signatures is not None else []
    if not found:
        raise FastadaptError(f"{where}: the bundle is not signed, but a signature by a trusted key is required; {fix}")
    message = bundle_message(manifest_bytes)
    for key, signature in found:
        if key in keys and verify(bytes.fromhex(key), message, signature):
            return key
    if any(key in keys for key, _ in found):
        raise FastadaptError(f"{where}: the signature does not match the bundle: it was modified after signing; "
                             f"do not use it, get the original")
    raise FastadaptError(f"{where}: signed by {', '.join(k[:16] + '...' for k, _ in found)}, none of them a trusted "
                         f"key; {fix}")


def read_private_key(path) -> bytes:
    where = os.fspath(path)
    if os.path.exists(where) and not os.path.isfile(where):  # a folder, or a FIFO that would block
        raise FastadaptError(f"--key {where}: not a regular file; pass the key file made by 'fastadapt keygen'")
    try:
        with open(where, "rb") as f:
            words = f.read(4096).decode("ascii", "replace").split()
    except OSError as exc:
        raise FastadaptError(f"--key {where}: cannot read the private key ({exc.strerror})") from None
    if len(words) != 2 or words[0] != PRIVATE_HEADER or not _HEX_KEY.fullmatch(words[1]):
        raise FastadaptError(f"--key {where}: not a fastadapt private key (make one with 'fastadapt keygen --out KEY')")
    return bytes.fromhex(words[1])


def write_private_key(path) -> bytes:
    """Write a new private key to ``path`` (mode 0600, never over an existing file); returns the public key."""
    secret = os.urandom(32)
    _write_new(os.fspath(path), f"{PRIVATE_HEADER} {secret.hex()}\n".encode(), 0o600)
    return public_key(secret)


def write_key_pair(path) -> str:
    """A new private key at ``path`` and its public key at ``path``.pub: both or neither, never over an
    existing file (an old .pub beside a new key would not match it). Returns the public key (hex)."""
    path = os.fspath(path)
    public = write_private_key(path).hex()
    try:
        _write_new(f"{path}.pub", f"{public}\n".encode(), 0o666)  # the umask applies, as to any new file
    except BaseException:  # no private key left without its public key
        os.remove(path)
        raise
    return public


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data``, all or nothing: a hidden temp file in the same folder, then a hard
    link to ``path``, which is atomic and fails when ``path`` exists. A full disk, a file size limit or
    Ctrl-C leaves nothing behind, not an empty key file that blocks every retry."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name[:40]}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                _write_exclusive(path, data, mode)  # FAT, exFAT (a USB stick): no hard links
        finally:
            os.unlink(tmp)
    except FileExistsError:
        raise FastadaptError(f"{printable(path)}: already exists; a key is never overwritten, choose another "
                             f"--out") from None
    except OSError as exc:
        raise FastadaptError(f"{printable(path)}: cannot write the key ({exc.strerror or exc}); nothing was "
                             f"written") from None


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}  # what link() says where unsupported


def _write_exclusive(path: str, data: bytes, mode: int) -> None:
    """``path`` created (never over an existing file) and written; removed again if writing fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(path)
        raise


def _kept_signatures(old: bytes | None, public: str, message: bytes, where: str) -> tuple:
    """(signatures to keep when ``public`` signs again, what was dropped as a warning or None). Kept: those
    of other keys that verify. A malformed member, or a signature made before the bundle was edited, is
    dropped: kept, it would be re-issued as if its key had signed this content, and a malformed one
    would make the bundle impossible to sign again."""
    if old is None:
        return [], None
    try:
        found = parse_signatures(old, where)
    except FastadaptError:
        return [], f"{where}: dropped its malformed {SIGNATURES} member ({len(old):,} bytes)"
    kept, stale = [], []
    for key, signature in found:
        if key == public:
            continue  # this key's entry is replaced, not added again
        if verify(bytes.fromhex(key), message, signature):
            kept.append((key, signature))
        else:
            stale.append(key[:16] + "...")
    note = f"{where}: dropped the signature(s) by {', '.join(stale)}, which no longer match the bundle (it was " \
           f"edited after they were made); their owners can sign it again" if stale else None
    return kept, note


def sign_bundle(path, secret: bytes, out=None) -> str:
    """Verify the bundle at ``path``, add (or replace) this key's signature and write it atomically to
    ``out`` (default: ``path``). Returns the public key (hex)."""
    import zipfile

    from .bundle import MANIFEST_CHECKSUM, ZIP_ERRORS, read_bundle, sha256, zip_bytes
    from .outputs import write_atomic

    bundle_path = os.fspath(path)
    where = printable(bundle_path)
    bundle = read_bundle(bundle_path, check_trust=False)  # never sign something damaged
    changed = FastadaptError(f"{where}: changed while it was being signed; try again")
    try:
        with zipfile.ZipFile(bundle_path) as archive:
            members = {name: archive.read(name) for name in ("manifest.json", MANIFEST_CHECKSUM,
                                                             *bundle.manifest["members"])}
    except ZIP_ERRORS:
        raise changed from None
    # what is signed is exactly what was verified (the file could have changed in between)
    if members["manifest.json"] != bundle.manifest_bytes or \
            members[MANIFEST_CHECKSUM].strip() != sha256(members["manifest.json"]).encode() or \
            any(sha256(members[name]) != bundle.manifest["members"][name] for name in bundle.manifest["members"]):
        raise changed
    public = public_key(secret).hex()
    message = bundle_message(bundle.manifest_bytes)
    kept, dropped = _kept_signatures(bundle.signatures, public, message, where)
    if len(kept) >= MAX_SIGNATURES:  # never drop one: devices trusting only that key would refuse the bundle
        raise FastadaptError(f"{where}: already carries {len(kept)} signatures by other keys, the most a bundle "
                             f"holds (one more would drop a key that devices may trust); sign an unsigned copy "
                             f"instead (the bundle as 'fastadapt export' or 'adapt' wrote it), with only the keys "
                             f"devices need")
    kept.append((public, sign(secret, message)))
    members[SIGNATURES] = "".join(f"ed25519 {k} {s.hex()}\n" for k, s in kept).encode()
    write_atomic(os.fspath(out) if out is not None else bundle_path, zip_bytes(members))  # reproducible
    if dropped:  # said once written: a refused or failed write dropped nothing
        warn(dropped)
    return public
