"""Download links (`POST /api/jobs/{id}/outputs/{name}/link`): a short-lived URL signed for
one user, one job and one output, fetched without a bearer header as a browser's
`<a href download>` does; served as an attachment with Range support. Expired, tampered,
someone else's or a gone user's links are refused in the error shape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server
from jobgate.links import link_key, link_path

KINDS = r"""
[kinds.report]
argv = ["sh", "-c", '''
printf '%s' "$0" > "$1/report.txt"
mkdir "$1/sub"
printf 'x' > "$1/sub/a b.txt"''', "{text}", "{output_dir}"]
[kinds.report.args]
text = { type = "string", default = "hello" }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("links"), TEST_KINDS + KINDS, backend) as srv:
        yield srv


@pytest.fixture(scope="module")
def done(server: Server) -> dict[str, Any]:
    """A completed job of bob's with the outputs report.txt and "sub/a b.txt"."""
    with server.client("bob") as http:
        job = http.post("/api/jobs", json={"kind": "report",
                                           "args": {"text": "0123456789" * 100}}).json()
        deadline = time.monotonic() + 30
        while job["state"] not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
            job = http.get(f"/api/jobs/{job['id']}").json()
    assert job["state"] == "completed", job
    return dict(job)


def link(server: Server, user: str, job_id: str, name: str) -> dict[str, Any]:
    with server.client(user) as http:
        response = http.post(f"/api/jobs/{job_id}/outputs/{name}/link")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def fetch(server: Server, url: str, **headers: str) -> httpx.Response:
    """The link fetched as a browser does: no Authorization header."""
    return httpx.get(server.url + url, headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message"} and words in error["message"], error


def server_key(server: Server) -> bytes:
    return link_key((server.folder / "data" / "secrets" / "jwt.key").read_bytes())


def test_a_link_downloads_the_output_without_a_token_as_an_attachment(server, done):
    got = link(server, "bob", done["id"], "report.txt")
    assert set(got) == {"url", "expires_at"}
    expires = time.mktime(time.strptime(got["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - \
        time.timezone
    assert time.time() < expires <= time.time() + 301
    response = fetch(server, got["url"])
    assert response.status_code == 200, response.text
    assert response.content == b"0123456789" * 100
    assert response.headers["content-disposition"] == 'attachment; filename="report.txt"'
    assert response.headers["content-type"].startswith("text/plain")
    assert "x-jobgate-partial" not in response.headers
    # A part of it, as a browser resuming a download asks.
    part = fetch(server, got["url"], Range="bytes=10-19")
    assert part.status_code == 206 and part.content == b"0123456789"
    # Good for a few minutes, not for one use only: a resumed download needs it again.
    assert fetch(server, got["url"]).status_code == 200


def test_a_nested_name_with_a_space_links_too(server, done):
    got = link(server, "bob", done["id"], "sub/a b.txt")
    response = fetch(server, got["url"])
    assert response.status_code == 200 and response.content == b"x"
    assert response.headers["content-disposition"] == "attachment; filename*=utf-8''a%20b.txt"


def test_an_admin_may_link_anyones_output_and_others_may_not(server, done):
    assert fetch(server, link(server, "alice", done["id"], "report.txt")["url"]
                 ).status_code == 200
    with server.client("carol") as carol:
        assert_error(carol.post(f"/api/jobs/{done['id']}/outputs/report.txt/link"), 404,
                     "no job")
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.post(f"/api/jobs/{done['id']}/outputs/report.txt/link"
                              ).status_code == 401


def test_a_link_to_nothing_is_refused_when_asked_for(server, done):
    with server.client("bob") as bob:
        assert_error(bob.post(f"/api/jobs/{done['id']}/outputs/nothing.txt/link"), 404,
                     "has no output")
        assert_error(bob.post("/api/jobs/nojob/outputs/report.txt/link"), 404, "no job")


@pytest.mark.parametrize("name", ["..%2F..%2F..%2Fjobgate.toml",
                                  "%2e%2e%2f%2e%2e%2f%2e%2e%2fjobgate.toml",
                                  "sub/..%2F..%2F..%2F..%2Fjobgate.toml", "a%00b", "%ed%a0%80x"])
def test_names_leading_out_or_not_text_are_404_without_echoing_them(server, done, name):
    with server.client("bob") as bob:
        response = bob.post(f"/api/jobs/{done['id']}/outputs/{name}/link")
    assert_error(response, 404, "has no output")
    assert response.content.isascii(), response.content  # escaped, never the raw bytes


def test_tampered_links_are_refused(server, done):
    url = link(server, "bob", done["id"], "report.txt")["url"]
    path, query = urlsplit(url).path, parse_qs(urlsplit(url).query)
    user, expires, sig = query["user"][0], query["expires"][0], query["signature"][0]

    def with_(p: str = path, u: str = user, e: str = expires, s: str = sig) -> httpx.Response:
        return httpx.get(server.url + p, params={"user": u, "expires": e, "signature": s})

    assert with_().status_code == 200
    assert_error(with_(s=sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")), 403,
                 "invalid download link")
    assert_error(with_(u="carol"), 403, "invalid download link")       # someone else's
    assert_error(with_(u="alice"), 403, "invalid download link")       # an admin's name
    assert_error(with_(e=str(int(expires) + 3600)), 403, "invalid download link")
    assert_error(with_(p=path.replace("report.txt", "sub/a%20b.txt")), 403,
                 "invalid download link")                              # another output
    assert_error(with_(s="\u00e9"), 403, "invalid download link")
    missing = httpx.get(server.url + path)
    assert missing.status_code == 422 and "error" in missing.json()


def test_an_expired_link_or_one_of_a_gone_user_is_refused(server, done):
    key = server_key(server)
    past = int(time.time()) - 1
    assert_error(fetch(server, link_path(key, done["id"], "report.txt", "bob", past)), 403,
                 "expired")
    soon = int(time.time()) + 60
    # Signed rightly, for a user who is no longer there (or never was).
    assert_error(fetch(server, link_path(key, done["id"], "report.txt", "ghost", soon)), 403,
                 "its user is gone")
    # Signed rightly for carol, who may not see bob's job: as if she had no such job.
    assert_error(fetch(server, link_path(key, done["id"], "report.txt", "carol", soon)), 404,
                 "no job")
    # Signed rightly, for a name leading out of the job's folder.
    # (`..%2F` in one segment: a client would fold a plain `../` away before sending it.)
    url = link_path(key, done["id"], "../../../jobgate.toml", "bob", soon)
    response = fetch(server, url.replace("../", "..%2F"))
    assert response.status_code == 404 and "[server]" not in response.text


def test_a_deleted_jobs_link_is_404(server):
    with server.client("bob") as bob:
        job = bob.post("/api/jobs", json={"kind": "report", "args": {}}).json()
        deadline = time.monotonic() + 30
        while job["state"] != "completed":
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
            job = bob.get(f"/api/jobs/{job['id']}").json()
        url = link(server, "bob", job["id"], "report.txt")["url"]
        assert bob.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert_error(fetch(server, url), 404, "no job")
