"""The server's own secrets kept in its data folder (`<data>/secrets/`, mode 0700): the
JWT signing key (auth.py) and the webhook signing secret (webhooks.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def secret_file(data_dir: Path, name: str, make: Callable[[], bytes]) -> Path:
    """The path of secret `name` in `data_dir`/secrets, made once with `make()` if it is
    not there yet; an existing file is never overwritten (reading it is the caller's).

    Why it is made this way: the contents go to a temporary file of its own (mode 0600
    from its creation, so no other user can read it even for a moment), written in full
    and synced, then hard-linked to `name`. A link fails if `name` already exists, so two
    processes starting together on one data folder (two nodes, two servers) both end up
    using whichever file was linked first, and no one ever reads a half-written secret.
    """
    folder = data_dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / name
    if not path.exists():
        tmp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, make())
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return path
