"""Uploads: files users send for their jobs' `path` arguments, each kept in its uploader's
own folder of the data folder, with its size and sha256.

- *Receiving* (`Uploads.begin` → `Incoming`): the bytes are written as they arrive to a
  temporary name (`.<id>.part`), hashed on the way, and counted against `[uploads]
  max_file_mb` and `quota_per_user_mb` (the user's stored uploads plus those still
  arriving in this process); past either the upload is refused and its file removed. Only
  `commit` renames it to its id and records it, so a cut connection leaves nothing usable.
- *Using*: a `path` argument names an upload as `upload:<id>` (see arguments.py); only its
  own uploader's jobs can use it, since the file is found from the job's owner.
- *Retention* (`prune`): an upload older than `[retention] uploads` that no job of its
  owner names any more (in any state: a finished job may still be retried) is deleted;
  jobs themselves go with `[retention] finished`.

Files are at `<data>/uploads/<owner key>/<id>`: the owner key is a hash of the user name,
so no user name (whatever characters it holds) becomes a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobgate.arguments import UPLOAD_PREFIX, is_upload_id
from jobgate.model import State, iso, new_id
from jobgate.sanitize import stored_text
from jobgate.store.base import Store, Upload

log = logging.getLogger("jobgate.uploads")

_MB = 1024 * 1024
_FLUSH_BYTES = 1 * _MB  # what an upload holds in memory before it is written out
_NAME_MAX_BYTES = 200  # a sanitised name's UTF-8 length
_STALE_PART_S = 86400.0  # a `.part` file this old belongs to no live upload (a crash)
# An upload is in use, and cannot be deleted by its owner, while a job naming it may run.
BUSY = (State.QUEUED, State.RUNNING)
ALL_STATES = tuple(State)


class UploadTooLarge(Exception):
    """An upload over `[uploads] max_file_mb` or its owner's quota (HTTP 413)."""


class UploadInUse(Exception):
    """An upload a queued or running job needs (HTTP 409)."""


def reference(upload_id: str) -> str:
    """How a job's args name an upload, as its stored JSON holds it (a string literal)."""
    return f'"{UPLOAD_PREFIX}{upload_id}"'


def owner_key(owner: str) -> str:
    """The folder name of `owner`'s uploads: a hash, so any user name is a safe path."""
    return hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def safe_name(raw: str | None) -> str:
    """A file name as given by a client, made safe to show and store: its last path part
    only (either slash), no NULs, control or format characters, lone surrogates or
    leading dots, at most 200 bytes of UTF-8; "upload" if nothing is left."""
    text = stored_text(raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C" and c != "\ufffd")
    text = unicodedata.normalize("NFC", text).strip().lstrip(".").strip()
    while len(text.encode()) > _NAME_MAX_BYTES:
        stem, dot, ext = text.rpartition(".")
        text = f"{stem[:-1]}{dot}{ext}" if dot and len(ext) < 16 and stem else text[:-1]
    return text or "upload"


@dataclass(frozen=True)
class Limits:
    """What one upload may take, in bytes (None: no limit)."""

    max_file_bytes: int | None
    quota_bytes: int | None


class Uploads:
    """One deployment's uploads: files under `<data>/uploads`, rows in the store."""

    def __init__(self, root: Path, store: Store, limits: Limits) -> None:
        self.root = root
        self.store = store
        self.limits = limits
        # Bytes still arriving in this process, per owner: they count against the quota.
        self.arriving: Counter[str] = Counter()

    def folder(self, owner: str) -> Path:
        return self.root / owner_key(owner)

    def file(self, owner: str, upload_id: str) -> Path:
        """Where `owner`'s upload `upload_id` is (or would be) kept."""
        return self.folder(owner) / upload_id

    async def begin(self, owner: str, name: str | None, declared_bytes: int | None = None
                    ) -> Incoming:
        """Start receiving a file for `owner`; UploadTooLarge at once if `declared_bytes`
        (what the client says it sends) is already over a limit."""
        allowed = self.limits.max_file_bytes
        why = f"a file may be at most {_shown_mb(allowed)}" if allowed is not None else ""
        if self.limits.quota_bytes is not None:
            used = await self.store.uploads_size(owner) + self.arriving[owner]
            left = max(0, self.limits.quota_bytes - used)
            if allowed is None or left < allowed:
                allowed = left
                why = (f"over your upload quota of {_shown_mb(self.limits.quota_bytes)} "
                       f"({_shown_mb(used)} used; delete some uploads first)")
        if allowed is not None and declared_bytes is not None and declared_bytes > allowed:
            raise UploadTooLarge(why)
        upload_id = new_id()
        folder = self.folder(owner)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True, mode=0o700)
        return Incoming(self, owner, upload_id, safe_name(name), allowed, why)

    async def get(self, owner: str, upload_id: str) -> Upload | None:
        """`owner`'s upload `upload_id`, or None (someone else's is None too)."""
        if not is_upload_id(upload_id):
            return None
        found = await self.store.get_upload(upload_id)
        return found if found is not None and found.owner == owner else None

    async def list(self, owner: str) -> list[Upload]:
        return await self.store.list_uploads(owner)

    async def used_bytes(self, owner: str) -> int:
        return await self.store.uploads_size(owner)

    async def delete(self, owner: str, upload_id: str) -> bool:
        """Delete `owner`'s upload; False if there is none, UploadInUse while a queued or
        running job of theirs names it."""
        if await self.get(owner, upload_id) is None:
            return False
        if not await self.store.delete_upload(upload_id, reference(upload_id), BUSY):
            if await self.get(owner, upload_id) is not None:
                raise UploadInUse(f"upload {upload_id} is used by a queued or running job: "
                                  "cancel it first")
            return False
        await asyncio.to_thread(_unlink, self.file(owner, upload_id))
        return True

    async def prune(self, before_ts: float) -> int:
        """Retention: delete the uploads made before `before_ts` that no job of their owner
        names, and `.part` files a crash left behind; how many uploads went."""
        count = 0
        for upload in await self.store.uploads_before(before_ts):
            if await self.store.delete_upload(upload.id, reference(upload.id), ALL_STATES):
                await asyncio.to_thread(_unlink, self.file(upload.owner, upload.id))
                count += 1
        await asyncio.to_thread(self._drop_stale_parts, time.time() - _STALE_PART_S)
        return count

    def _drop_stale_parts(self, before_ts: float) -> None:
        if not self.root.is_dir():
            return
        for part in self.root.glob("*/.*.part"):
            try:
                if part.stat().st_mtime < before_ts:
                    part.unlink()
            except OSError:
                pass


class Incoming:
    """One file arriving: `write` its bytes, then `commit` (or `abort`)."""

    def __init__(self, uploads: Uploads, owner: str, upload_id: str, name: str,
                 allowed_bytes: int | None, why: str) -> None:
        self._uploads, self.owner, self.id, self.name = uploads, owner, upload_id, name
        self._allowed, self._why = allowed_bytes, why
        self._final = uploads.file(owner, upload_id)
        self._part = self._final.with_name(f".{upload_id}.part")
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._file: Any = None
        self.size = 0
        self._done = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes; UploadTooLarge (the file removed) past a limit."""
        if not data:
            return
        self.size += len(data)
        self._uploads.arriving[self.owner] += len(data)
        if self._allowed is not None and self.size > self._allowed:
            await self.abort()
            raise UploadTooLarge(self._why)
        self._buffer += data
        if len(self._buffer) >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        chunk, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(self._write_chunk, chunk)

    def _write_chunk(self, chunk: bytes) -> None:
        if self._file is None:
            fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600)
            self._file = os.fdopen(fd, "wb", buffering=0)
        self._hash.update(chunk)
        self._file.write(chunk)

    async def commit(self) -> Upload:
        """The whole file is in: renamed to its id and recorded."""
        await self._flush()
        await asyncio.to_thread(self._finish_file)
        upload = Upload(self.id, self.owner, self.name, self.size, self._hash.hexdigest(),
                        time.time())
        try:
            await self._uploads.store.add_upload(upload)
        except BaseException:
            await asyncio.to_thread(_unlink, self._final)
            raise
        finally:
            self._release()
        return upload

    def _finish_file(self) -> None:
        if self._file is None:
            self._write_chunk(b"")  # an empty file is a file too
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._part, self._final)

    async def abort(self) -> None:
        """Give up: the partial file is removed (safe to call more than once)."""
        self._buffer = bytearray()
        await asyncio.to_thread(self._drop_file)
        self._release()

    def _drop_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        _unlink(self._part)

    def _release(self) -> None:
        if self._done:
            return
        self._done = True
        arriving = self._uploads.arriving
        arriving[self.owner] -= self.size
        if arriving[self.owner] <= 0:
            del arriving[self.owner]


def to_json(upload: Upload) -> dict[str, Any]:
    """An upload as the API shows it; `ref` is what a `path` argument takes."""
    return {"id": upload.id, "name": upload.name, "size": upload.size,
            "sha256": upload.sha256, "created_at": iso(upload.created_at),
            "ref": f"{UPLOAD_PREFIX}{upload.id}"}


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _shown_mb(value: int) -> str:
    mb = value / _MB
    return f"{mb:.0f} MB" if mb >= 10 or mb == int(mb) else f"{mb:.1f} MB"
