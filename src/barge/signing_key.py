"""The secret that signs download links: given in the settings, or kept in
``data_dir/signing.key`` (made on first start, mode 0600) so links survive restarts."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from barge.blobs.local import fsync_dir
from barge.exceptions import BargeError

KEY_FILE = "signing.key"
MIN_SECRET_BYTES = 32


def check_signing_secret(configured: str | None) -> None:
    """A configured secret must be at least 32 bytes: a short one can be guessed, and
    with it every download link forged."""
    if configured is None:
        return
    size = len(configured.encode())
    if size < MIN_SECRET_BYTES:
        raise BargeError(
            f"--signing-secret / BARGE_SIGNING_SECRET must be at least {MIN_SECRET_BYTES} "
            f"bytes, not {size} (e.g. the output of 'openssl rand -hex 32'); leave it unset "
            f"to keep a generated one in DATA_DIR/{KEY_FILE}."
        )


def load_signing_secret(data_dir: Path, configured: str | None) -> str:
    """``configured`` when set (at least 32 bytes); else the data directory's key,
    created if absent."""
    if configured is not None:
        check_signing_secret(configured)
        return configured
    path = data_dir / KEY_FILE
    if not path.exists():
        _create(path)
    try:
        secret = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise BargeError(f"The signing key {path} cannot be read.") from e
    if len(secret) < 32:
        raise BargeError(
            f"The signing key {path} is empty or too short; remove it to make a new one."
        )
    return secret


def _create(path: Path) -> None:
    """Write a fresh key to a private temporary file, then link it into place: the key
    appears whole or not at all, and a key made meanwhile by another process wins."""
    tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
