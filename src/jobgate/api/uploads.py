"""The upload routes (`/api/uploads`): a file in, streamed to disk; the caller's own listed
and deleted. A thin layer over `jobgate.uploads`.

The body is parsed as it arrives with python-multipart's streaming `MultipartParser`, not
Starlette's `request.form()`: that one spools each file to a temporary file of its own
(outside the data folder, in whatever `/tmp` is, possibly memory) and limits only the
size of plain fields, so a file over the quota would be read whole before it could be
refused, and then copied. Here each chunk goes straight to the upload's own file, and the
limits are checked as the bytes come.

Uploads are private to their uploader, admins included: an admin's job cannot use another
user's file either, so nobody's upload is listed to anyone else.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from jobgate.api.core import ApiError, CurrentUser, services_of
from jobgate.uploads import Incoming, UploadInUse, Uploads, UploadTooLarge, to_json

#: The upload route: the request-size cap of the JSON API does not apply to it.
UPLOAD_PATH = "/api/uploads"
_FIELD = "file"
_MAX_HEADERS_BYTES = 16 * 1024  # a part's headers
_FRAMING_BYTES = 64 * 1024  # more than any honest body's boundaries, headers and fields


def install(app: FastAPI) -> None:
    """Add the upload routes to `app`."""

    @app.post(UPLOAD_PATH, status_code=201, tags=["uploads"])
    async def upload(request: Request, user: CurrentUser) -> Response:
        """Upload one file as `multipart/form-data`, in the field `file` (`curl -F
        file=@film.mkv`); answers `{id, name, size, sha256, created_at, ref}`, where `ref`
        (`upload:<id>`) is what a `path` argument takes."""
        uploads = services_of(request).queue.uploads
        kind, options = parse_options_header(request.headers.get("content-type"))
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise ApiError(415, "unsupported_media_type", "send the file as multipart/form-data "
                           f"in a field named {_FIELD!r} (curl -F {_FIELD}=@./film.mkv)")
        length = request.headers.get("content-length")
        # The file is the body less the multipart framing: at least this much of it.
        at_least = max(0, int(length) - _FRAMING_BYTES) if length and length.isdigit() \
            else None
        receiver = _Receiver(uploads, user.name, at_least)
        try:
            parser = MultipartParser(boundary, receiver.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
                await receiver.step()
            parser.finalize()
            await receiver.step()
            done = await receiver.commit()
        except ClientDisconnect:
            await receiver.abort()
            return Response(status_code=400)  # nobody reads it: the client is gone
        except FormParserError as exc:
            await receiver.abort()
            raise ApiError(400, "invalid_request", f"not a valid multipart body: {exc}") from None
        except UploadTooLarge as exc:
            await receiver.abort()
            raise ApiError(413, "too_large", f"upload refused: {exc}") from None
        except BaseException:
            await receiver.abort()
            raise
        return JSONResponse(to_json(done), status_code=201)

    @app.get(UPLOAD_PATH, tags=["uploads"])
    async def list_uploads(request: Request, user: CurrentUser) -> dict[str, Any]:
        """The caller's uploads, newest first, with what they take of the quota."""
        services = services_of(request)
        uploads = services.queue.uploads
        limits = services.settings.uploads
        return {"uploads": [to_json(u) for u in await uploads.list(user.name)],
                "used_bytes": await uploads.used_bytes(user.name),
                "quota_per_user_mb": limits.quota_per_user_mb,
                "max_file_mb": limits.max_file_mb}

    @app.get(UPLOAD_PATH + "/{upload_id}", tags=["uploads"])
    async def get_upload(upload_id: str, request: Request, user: CurrentUser
                         ) -> dict[str, Any]:
        found = await services_of(request).queue.uploads.get(user.name, upload_id)
        if found is None:
            raise _no_upload(upload_id)
        return to_json(found)

    @app.delete(UPLOAD_PATH + "/{upload_id}", status_code=204, tags=["uploads"])
    async def delete_upload(upload_id: str, request: Request, user: CurrentUser) -> Response:
        """Delete one of the caller's uploads (409 while a queued or running job uses it)."""
        try:
            deleted = await services_of(request).queue.uploads.delete(user.name, upload_id)
        except UploadInUse as exc:
            raise ApiError(409, "in_use", str(exc)) from None
        if not deleted:
            raise _no_upload(upload_id)
        return Response(status_code=204)


def _no_upload(upload_id: str) -> ApiError:
    shown_id = upload_id if upload_id.isascii() and upload_id.isalnum() and \
        len(upload_id) <= 64 else "with that id"
    return ApiError(404, "not_found", f"no upload {shown_id}")


class _Receiver:
    """The parser's callbacks: they note what arrives (they cannot wait); `step` then
    hands the file's bytes to its `Incoming` and starts or ends it."""

    def __init__(self, uploads: Uploads, owner: str, content_length: int | None) -> None:
        self.uploads, self.owner, self.content_length = uploads, owner, content_length
        self.incoming: Incoming | None = None
        self.done = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._in_file = False  # the current part is the file
        self._starting: bytes | None = None  # the file part's filename, once its headers are in
        self._pending = bytearray()  # file bytes parsed, not yet handed on
        self._ended = False  # the file part ended

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._header_bytes, self._in_file = {}, 0, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._grow(self._field, data[start:end])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._grow(self._value, data[start:end])

    def _grow(self, into: bytearray, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > _MAX_HEADERS_BYTES:
            raise FormParserError("a part's headers are too long")
        into += data

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if options.get(b"name") != _FIELD.encode():
            return  # another field: its bytes are skipped
        if self.incoming is not None or self._starting is not None:
            raise FormParserError(f"only one file per upload (one {_FIELD!r} field)")
        self._in_file = True
        self._starting = options.get(b"filename", b"upload")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending += data[start:end]

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._ended = True

    async def step(self) -> None:
        if self._starting is not None and self.incoming is None:
            name = self._starting.decode("utf-8", "replace")
            self.incoming = await self.uploads.begin(self.owner, name, self.content_length)
        if self.incoming is not None and self._pending:
            data, self._pending = self._pending, bytearray()
            await self.incoming.write(data)

    async def commit(self) -> Any:
        if self.incoming is None or not self._ended:
            raise ApiError(422, "invalid_request", f"no file in the request: send it in a "
                           f"field named {_FIELD!r} (curl -F {_FIELD}=@./film.mkv)",
                           field=_FIELD)
        upload = await self.incoming.commit()
        self.done = True
        return upload

    async def abort(self) -> None:
        if self.incoming is not None and not self.done:
            await self.incoming.abort()
