"""The command line's HTTP client: the API at `JOBGATE_URL` with `JOBGATE_TOKEN`; every
refusal, unreachable server or bad setting is a `CliError` (one line, an exit code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobgate.config import DEFAULT_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


class CliError(Exception):
    """One line for stderr and the exit code: 1 refused or failed, 2 bad usage."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Client:
    """Calls the API at `JOBGATE_URL` as the user of `JOBGATE_TOKEN`: the public client
    (`jobgate.sdk.Client`), its errors made `CliError` lines."""

    def __init__(self) -> None:
        import httpx  # only client commands pay for it

        from jobgate.sdk import Client as ApiClient

        self.url = os.environ.get("JOBGATE_URL", DEFAULT_URL).rstrip("/")
        token = os.environ.get("JOBGATE_TOKEN")
        if token is not None and not (token.isascii() and token.isprintable()):
            raise CliError("JOBGATE_TOKEN is not a valid token: it has characters a token "
                           "never has (print a new one with `jobgate token NAME`)", 2)
        try:
            self.api = ApiClient(self.url, token or None)
            self.http = self.api.http
            self.http.build_request("GET", "/health")
        except (httpx.InvalidURL, ValueError) as exc:
            raise CliError(f"JOBGATE_URL is not a valid URL ({self.url!r}): {exc}", 2) from None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        from jobgate.sdk_types import ClientError

        try:
            return self.api.call(method, path, **kwargs)
        except httpx.InvalidURL as exc:
            raise CliError(f"JOBGATE_URL is not a valid URL ({self.url!r}): {exc}", 2) from None
        except (httpx.HTTPError, ClientError) as exc:
            if isinstance(exc, ClientError) and exc.status:
                raise CliError(f"{exc.message} (HTTP {exc.status})") from None
            cause = exc.__cause__ if isinstance(exc, ClientError) else exc
            raise CliError(f"cannot reach jobgate at {self.url} "
                           f"({cause.__class__.__name__}): "
                           "is `jobgate serve` running? (JOBGATE_URL)") from None

    def upload(self, path: Path) -> dict[str, Any]:
        """Upload the file at `path` (POST /api/uploads, streamed from disk, not read into
        memory); the server's answer `{id, name, size, sha256, ref, …}`."""
        try:
            file = path.open("rb")
        except OSError as exc:
            raise CliError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        if not path.is_file():
            file.close()
            raise CliError(f"cannot upload {str(path)!r}: not a regular file")
        with file:
            found: dict[str, Any] = self.call("POST", "/api/uploads",
                                              files={"file": (path.name, file)})
        return found
