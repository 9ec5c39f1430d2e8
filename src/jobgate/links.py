"""Download links for jobs' outputs: a URL a browser can fetch without a bearer header
(`<a href download>` streams a multi-GB file to disk; a `fetch` with the token would hold
it all in memory first).

A link names the job, the output, the user it was made for and when it expires, signed
with HMAC-SHA256 by a key derived from the server's JWT key (`auth.load_or_create_key`),
so every server process of one data folder accepts the links of the others, and nothing
is stored. It is good for `LINK_TTL_S`; who may fetch it is checked again when it is used
(the user still exists and may still see the job).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, urlencode

#: How long a download link may be used to start a download (a started one runs on).
LINK_TTL_S = 300.0
# Signing links with the JWT key itself would let a link's signature pass for something
# else signed by it one day: each purpose gets its own key.
_PURPOSE = b"jobgate output download link v1"


def link_key(secret: bytes) -> bytes:
    """The key that signs links, derived from the server's secret (the JWT key)."""
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


def signature(key: bytes, job_id: str, name: str, user: str, expires_at: int) -> str:
    """The signature of a link to output `name` of job `job_id` for `user`, good until
    `expires_at` (epoch seconds). The fields are joined with NUL, which none may hold, so
    no two links sign the same text."""
    # `surrogatepass`: a name that is not valid text gets a signature nobody has, not a 500.
    message = "\0".join((job_id, name, user, str(expires_at))).encode("utf-8",
                                                                       "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def link_path(key: bytes, job_id: str, name: str, user: str, expires_at: int) -> str:
    """The path and query of the download link (the route `GET /api/jobs/{id}/download/…`)."""
    query = urlencode({"user": user, "expires": expires_at,
                       "signature": signature(key, job_id, name, user, expires_at)})
    return f"/api/jobs/{quote(job_id, safe='')}/download/{quote(name, safe='/')}?{query}"


def valid(key: bytes, job_id: str, name: str, user: str, expires_at: int, given: str) -> bool:
    """Whether `given` is the signature of that link (compared in constant time)."""
    expected = signature(key, job_id, name, user, expires_at)
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
