"""Webhooks: a POST of a job's JSON at its end, signed as the Standard Webhooks
specification says (https://www.standardwebhooks.com), with its reference package.

Each request carries `webhook-id` (the delivery's id: the same on every retry of one
message, so a receiver can drop a repeat), `webhook-timestamp` (epoch seconds of this
attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), with
the key of `[webhooks] secret` (`whsec_<base64>`). The body is the job as
GET /api/jobs/{id} showed it when it ended.

A job's own `webhook_url` is checked as `url` arguments are (addresses.py) at submit and
again before each attempt (a name may resolve elsewhere by then), and redirects are never
followed: the URL a user gave is the only address a webhook reaches.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from jobgate.addresses import is_public, parse_address, url_problem
from jobgate.deliveries import Attempt, excerpt
from jobgate.secret_files import secret_file

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks mark of a secret
_SECRET_FILE = "webhook_secret"  # noqa: S105 - a file name
_SECRET_BYTES = 32
USER_AGENT = "jobgate-webhooks"


def secret_problem(secret: str) -> str | None:
    """Why `secret` is not a Standard Webhooks secret (`whsec_` + base64 of 24+ bytes)."""
    if not secret.startswith(SECRET_PREFIX):
        return f"must start with {SECRET_PREFIX} (then the key in base64)"
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==", validate=False)
    except (binascii.Error, ValueError):
        return "is not base64 after whsec_"
    if len(key) < 24:
        return f"holds a key of {len(key)} bytes; at least 24 are needed"
    return None


def new_secret() -> str:
    """A fresh secret in the Standard Webhooks form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def load_or_create_secret(data_dir: Path, configured: str | None) -> str:
    """The signing secret: `[webhooks] secret` if set, else the one kept in the data
    folder (made once, mode 0600, linked into place so two nodes starting together on
    one folder share it)."""
    if configured:
        return configured
    path = secret_file(data_dir, _SECRET_FILE, lambda: new_secret().encode())
    return path.read_text().strip()


def headers(secret: str, msg_id: str, body: str, now: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, with the content type."""
    stamp = dt.datetime.fromtimestamp(int(time.time() if now is None else now), dt.UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, stamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def shown_url(url: str) -> str:
    """A webhook URL as logs and the API show it: no user info, query or fragment (where
    tokens go), the path cut short."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(not a valid URL)"
    if ":" in host:
        host = f"[{host}]"
    path = parts.path if len(parts.path) <= 40 else parts.path[:40] + "…"
    return f"{parts.scheme}://{host}{port}{path}" + ("?…" if parts.query else "")


def address_problem(url: str, allow_private: bool) -> str | None:
    """Why a job's webhook URL may not be reached (as a `url` argument), or None. Blocks
    on DNS: call it off the event loop."""
    problem = url_problem(url)
    if problem is not None:
        return problem
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return f"cannot resolve host {host!r}"
    if not allow_private:
        for info in infos:
            if not is_public(parse_address(str(info[4][0]))):
                return f"host {host!r} is a private or local address"
    return None


async def post(client: httpx.AsyncClient, url: str, body: str, secret: str, msg_id: str,
               n: int, worker: str, timeout_s: float) -> Attempt:
    """One attempt: POST `body` to `url`, signed; a 2xx answer is a success, anything else
    (another status, a redirect, no answer in `timeout_s`) a failure to try again."""
    started = time.time()
    t0 = time.monotonic()
    try:
        response = await client.post(url, content=body.encode(),
                                     headers=headers(secret, msg_id, body, started),
                                     timeout=timeout_s, follow_redirects=False)
        text = response.text
    except httpx.HTTPError as exc:
        return Attempt(n, started, _ms(t0), error=f"{type(exc).__name__}: {exc}"[:300] or
                       type(exc).__name__, worker=worker)
    status = response.status_code
    error = None if 200 <= status < 300 else f"HTTP {status}"
    return Attempt(n, started, _ms(t0), status, excerpt(text), error, worker)


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)
