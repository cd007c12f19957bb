"""``fastadapt keygen`` and ``fastadapt sign``: Ed25519 signatures for bundles (torch-free, see signing.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import FastadaptError
from ..manifest import printable
from . import app

PANEL = "Signing"


@app.command(rich_help_panel=PANEL)
def keygen(
    out: Path = typer.Option(..., "--out", help="Where to write the new private key (mode 0600; never over an "
                                                "existing file). The public key goes to OUT.pub.", show_default=False),
) -> None:
    """Make an Ed25519 key pair for signing bundles, and print the public key.

    Keep the private key secret (only 'fastadapt sign' needs it). Give devices the public key:
    fastadapt.load(path, trusted_keys=["HEX"]) or FASTADAPT_TRUSTED_KEYS=HEX.

    Example: fastadapt keygen --out signing.key && fastadapt sign model.fadapt --key signing.key
    """
    from ..outputs import refuse_unwritable
    from ..signing import write_key_pair

    refuse_unwritable(str(out), "--out", "signing.key")  # '-' (stdout), a folder, a link, a missing folder
    # both files checked before either is written: an old OUT.pub beside a new key would not match it
    for path in (str(out), f"{out}.pub"):
        if os.path.lexists(path):
            raise FastadaptError(f"--out {printable(out)}: {printable(path)} already exists; a key is never "
                                 f"overwritten, choose another --out")
    public = write_key_pair(str(out))
    print(f"wrote private key {printable(out)} (keep it secret) and public key {printable(out)}.pub", file=sys.stderr)
    print(f"public key: {public}")
    print(f"devices trust it with FASTADAPT_TRUSTED_KEYS={public}", file=sys.stderr)


@app.command(rich_help_panel=PANEL)
def sign(
    model: Path = typer.Argument(..., help="The .fadapt bundle to sign (meta or adapted).", show_default=False),
    key: Path = typer.Option(..., "--key", help="The private key made by 'fastadapt keygen'.", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the signed bundle here. Default: sign MODEL in "
                                                           "place (atomically)."),
) -> None:
    """Sign a bundle, so devices that require a trusted key accept it (and refuse it once edited).

    The bundle is verified first; the signature covers the manifest's SHA-256, which covers every member.
    Signing again with another key adds a second signature (at most 16); signing again with the same key
    replaces its own. Signatures that no longer match the bundle (edited since) are dropped, with a warning.

    Example: fastadapt sign model.fadapt --key signing.key
    """
    from ..signing import read_private_key, sign_bundle

    if out is not None:
        from . import check_out

        check_out(out, example="signed.fadapt", inputs=[key, f"{key}.pub"])  # never over the key pair
    public = sign_bundle(str(model), read_private_key(str(key)), None if out is None else str(out))
    print(f"signed {printable(out if out is not None else model)} with key {public}")
    if out is not None and os.path.abspath(str(out)) != os.path.abspath(str(model)):
        # not "unsigned": the original may carry signatures of its own
        print(f"(the original {printable(model)} is unchanged)", file=sys.stderr)
