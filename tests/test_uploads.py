"""Uploads against a real `jobgate serve` on each backend: multipart bodies as curl and a
browser send them, limits while streaming (413, nothing left behind), a cut connection,
privacy between users, `upload:ID` in path arguments, the CLI's `NAME=@./file`, and
retention of uploads no job names any more (in process, on each backend)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server, wait_job
from conftest import wait_state as wait_queue_state
from jobgate.uploads import owner_key

MB = 1024 * 1024
CONFIG = """
[limits]
max_running = 1
[uploads]
max_file_mb = 2
quota_per_user_mb = 5
[kinds.checksum]
argv = ["sha256sum", "{file}"]
[kinds.checksum.args]
file = { type = "path" }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("uploads"), CONFIG + TEST_KINDS,
                        backend) as srv:
        yield srv



def upload(http: httpx.Client, data: bytes, name: str = "film.mkv") -> httpx.Response:
    return http.post("/api/uploads", files={"file": (name, data, "video/x-matroska")})


def clear(http: httpx.Client) -> None:
    for up in http.get("/api/uploads").json()["uploads"]:
        assert http.delete(f"/api/uploads/{up['id']}").status_code == 204


def leftovers(server: Server, user: str) -> list[str]:
    folder = server.folder / "data" / "uploads" / owner_key(user)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_an_upload_answers_its_id_name_size_and_sha256(server: Server) -> None:
    data = os.urandom(MB + 123)
    with server.client("bob") as bob:
        clear(bob)
        # As a client may send it (httpx would escape the NUL): raw bytes in the header.
        body = (b'--b\r\nContent-Disposition: form-data; name="file"; '
                b'filename="../..\\etc/Fi\x00lm\x1b one.mkv"\r\n\r\n' + data + b"\r\n--b--\r\n")
        response = bob.post("/api/uploads", content=body, headers={
            "content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 201, response.text
        up = response.json()
        assert up["size"] == len(data)
        assert up["sha256"] == hashlib.sha256(data).hexdigest()
        assert up["name"] == "Film one.mkv"  # last path part, no NUL
        assert up["ref"] == f"upload:{up['id']}"
        listed = bob.get("/api/uploads").json()
        assert [u["id"] for u in listed["uploads"]] == [up["id"]]
        assert listed["used_bytes"] == len(data) and listed["max_file_mb"] == 2
        assert bob.get(f"/api/uploads/{up['id']}").json() == up
        stored = server.folder / "data" / "uploads" / owner_key("bob") / up["id"]
        assert stored.read_bytes() == data
        assert leftovers(server, "bob") == [up["id"]]


def test_a_user_sees_and_deletes_only_their_own_uploads(server: Server) -> None:
    with server.client("bob") as bob, server.client("carol") as carol, \
            server.client("alice") as admin:
        clear(bob)
        up = upload(bob, b"bob's").json()
        for other in (carol, admin):  # an admin too: uploads are private
            assert up["id"] not in [u["id"] for u in other.get("/api/uploads").json()["uploads"]]
            assert other.get(f"/api/uploads/{up['id']}").status_code == 404
            assert other.delete(f"/api/uploads/{up['id']}").status_code == 404
        assert bob.delete(f"/api/uploads/{up['id']}").status_code == 204
        assert bob.get(f"/api/uploads/{up['id']}").status_code == 404
        assert leftovers(server, "bob") == []


def test_a_path_argument_takes_an_upload_and_the_job_shows_only_its_ref(
        server: Server) -> None:
    data = b"frames" * 1000
    with server.client("bob") as bob:
        clear(bob)
        up = upload(bob, data).json()
        job = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": up["ref"]}})
        assert job.status_code == 201, job.text
        assert job.json()["args"] == {"file": up["ref"]}
        done = wait_job(bob, job.json()["id"], "completed", "failed")
        assert done["state"] == "completed", done
        assert done["args"] == {"file": up["ref"]}
        lines = bob.get(f"/api/jobs/{done['id']}/logs").json()["lines"]
        assert lines[0]["line"].startswith(hashlib.sha256(data).hexdigest())


def test_another_users_upload_is_refused_as_if_unknown(server: Server) -> None:
    with server.client("bob") as bob, server.client("carol") as carol:
        clear(bob)
        up = upload(bob, b"private").json()
        theirs = carol.post("/api/jobs", json={"kind": "checksum", "args": {"file": up["ref"]}})
        unknown = carol.post("/api/jobs", json={"kind": "checksum",
                                                "args": {"file": "upload:01NOSUCHUPLOAD"}})
        assert theirs.status_code == unknown.status_code == 422, theirs.text
        assert theirs.json()["error"]["field"] == "file"
        assert theirs.json()["error"]["message"].replace(up["id"], "X") == \
            unknown.json()["error"]["message"].replace("01NOSUCHUPLOAD", "X")


def test_an_upload_a_queued_job_needs_cannot_be_deleted(server: Server) -> None:
    with server.client("bob") as bob:
        clear(bob)
        up = upload(bob, b"needed").json()
        later = time.time() + 3600
        job = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": up["ref"]},
                                          "run_at": later}).json()
        refused = bob.delete(f"/api/uploads/{up['id']}")
        assert refused.status_code == 409, refused.text
        assert "queued or running job" in refused.json()["error"]["message"]
        bob.post(f"/api/jobs/{job['id']}/cancel")
        assert bob.delete(f"/api/uploads/{up['id']}").status_code == 204


@pytest.mark.parametrize("chunked", [False, True])
def test_a_file_over_max_file_mb_is_refused_while_streaming_and_removed(
        server: Server, chunked: bool) -> None:
    boundary = "jobgateboundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.bin\"\r\n\r\n").encode()
        for _ in range(3):
            yield b"x" * MB
        yield f"\r\n--{boundary}--\r\n".encode()

    content: Any = body() if chunked else b"".join(body())
    with server.client("bob") as bob:
        clear(bob)
        response = bob.post("/api/uploads", content=content, headers={
            "content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "too_large" and "at most 2 MB" in error["message"]
        assert bob.get("/api/uploads").json()["uploads"] == []
        wait_until(lambda: leftovers(server, "bob") == [])


def test_the_quota_counts_every_upload_of_the_user(server: Server) -> None:
    with server.client("carol") as carol, server.client("bob") as bob:
        clear(carol)
        clear(bob)
        for _ in range(2):
            assert upload(carol, b"q" * (2 * MB)).status_code == 201
        refused = upload(carol, b"q" * (2 * MB))
        assert refused.status_code == 413, refused.text
        assert "quota of 5 MB" in refused.json()["error"]["message"]
        assert len(carol.get("/api/uploads").json()["uploads"]) == 2
        wait_until(lambda: len(leftovers(server, "carol")) == 2)
        assert upload(bob, b"q" * (2 * MB)).status_code == 201  # bob's quota is his own
        clear(carol)
        assert upload(carol, b"q" * (2 * MB)).status_code == 201  # room again


def test_a_cut_connection_leaves_nothing_listed_nor_on_disk(server: Server) -> None:
    with server.client("bob") as bob:
        clear(bob)
        head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\""
                b"\r\n\r\n")
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /api/uploads HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + server.tokens["bob"].encode() + b"\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: " + str(len(head) + 2 * MB - 100).encode() + b"\r\n\r\n")
        sock.sendall(head + b"y" * (3 * MB // 2))  # past the 1 MB an upload buffers
        # The half file reaches the disk (as a .part) before the client goes away.
        wait_until(lambda: any(n.endswith(".part") for n in leftovers(server, "bob")))
        sock.close()
        wait_until(lambda: leftovers(server, "bob") == [])
        assert bob.get("/api/uploads").json()["uploads"] == []


def test_bad_upload_requests_are_clear_4xx(server: Server) -> None:
    with server.client("bob") as bob:
        as_json = bob.post("/api/uploads", json={"file": "x"})
        assert as_json.status_code == 415 and "multipart/form-data" in as_json.text
        wrong_field = bob.post("/api/uploads", files={"video": ("a.mkv", b"x")})
        assert wrong_field.status_code == 422 and "'file'" in wrong_field.text
        two = bob.post("/api/uploads", files=[("file", ("a", b"1")), ("file", ("b", b"2"))])
        assert two.status_code == 400 and "one file" in two.text
        assert bob.post("/api/uploads", content=b"garbage", headers={
            "content-type": "multipart/form-data; boundary=zz"}).status_code in (400, 422)
        with server.client(None) as anonymous:
            assert upload(anonymous, b"x").status_code == 401
        assert not any(n.endswith(".part") for n in leftovers(server, "bob"))


def test_the_cli_uploads_a_file_then_submits_with_its_ref(server: Server) -> None:
    film = server.folder / "film.mkv"
    film.write_bytes(b"cli film" * 100)
    with server.client("bob") as bob:
        clear(bob)
        done = server.cli("submit", "checksum", "file=@./film.mkv", user="bob")
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.split()[0]
        job = wait_job(bob, job_id, "completed", "failed")
        assert job["state"] == "completed" and job["args"]["file"].startswith("upload:")
        [up] = bob.get("/api/uploads").json()["uploads"]
        assert job["args"]["file"] == up["ref"] and up["name"] == "film.mkv"
        assert up["sha256"] == hashlib.sha256(film.read_bytes()).hexdigest()


def test_the_cli_says_in_one_line_why_an_upload_failed(server: Server) -> None:
    (server.folder / "huge.bin").write_bytes(b"z" * (3 * MB))
    missing = server.cli("submit", "checksum", "file=@./nope.mkv", user="bob")
    too_big = server.cli("submit", "checksum", "file=@./huge.bin", user="bob")
    for run in (missing, too_big):
        assert run.returncode != 0 and run.stdout == ""
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "Traceback" not in run.stderr
    assert "no such file" in missing.stderr
    assert "HTTP 413" in too_big.stderr and "at most 2 MB" in too_big.stderr


def wait_until(predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


# --- retention (in process) ---------------------------------------------------------------

async def test_retention_deletes_uploads_no_job_names_and_keeps_the_others(
        make_settings: Any, open_queue: Any) -> None:
    settings = make_settings('[retention]\nuploads = "1ms"\n', CONFIG)
    queue, _ = await open_queue(settings, worker=False)
    uploads = queue.uploads

    async def add(owner: str) -> str:
        incoming = await uploads.begin(owner, "a.bin")
        await incoming.write(b"data")
        return str((await incoming.commit()).id)

    unused, queued_one, finished_one = [await add("bob") for _ in range(3)]
    queued = await queue.submit("bob", "checksum", {"file": f"upload:{queued_one}"},
                                run_at=time.time() + 3600)
    finished = await queue.submit("bob", "checksum", {"file": f"upload:{finished_one}"})
    await queue.cancel(finished[0].id)
    await wait_queue_state(queue, finished[0].id, "cancelled")
    cutoff = time.time()
    fresh = await add("bob")  # made at the cutoff or after: not yet due
    uploads_of = {u.id for u in await uploads.list("bob")}
    assert {unused, queued_one, finished_one, fresh} <= uploads_of
    assert await uploads.prune(cutoff) == 1  # only `unused`: the others are named by jobs
    left = {u.id for u in await uploads.list("bob")}
    assert unused not in left and {queued_one, finished_one, fresh} <= left
    assert not uploads.file("bob", unused).exists()
    # Once its finished job is cleaned, its upload goes too; the queued job's stays.
    await queue.clean(0)
    await queue.prune()
    left = {u.id for u in await uploads.list("bob")}
    assert finished_one not in left and queued_one in left
    assert uploads.file("bob", queued_one).exists()
    assert queued[0].state.value == "queued"


def test_nothing_of_an_upload_is_in_memory_past_a_chunk(tmp_path: Path) -> None:
    # The streaming parser hands the file over chunk by chunk: a parser fed a 5 MB part in
    # 64 KB pieces never holds more than a piece of it (see api/uploads.py _Receiver).
    from jobgate.api.uploads import _Receiver

    receiver = _Receiver(None, "bob", None)  # type: ignore[arg-type]
    from python_multipart import MultipartParser

    parser = MultipartParser(b"b", receiver.callbacks())
    parser.write(b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n')
    biggest = 0
    for _ in range(80):
        parser.write(b"p" * 65536)
        biggest = max(biggest, len(receiver._pending))
        receiver._pending = bytearray()  # what `step` hands on
    assert 0 < biggest <= 65536


# --- the dashboard's file picker ----------------------------------------------------------

def test_the_dashboard_uploads_a_picked_file_with_progress_and_submits_its_ref(
        server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from test_dashboard import CHROMIUM, CHROMIUM_ARGS

    film = tmp_path / "picked film.mkv"
    film.write_bytes(os.urandom(MB + 7))
    with server.client("carol") as carol:
        clear(carol)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(base_url=server.url).new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto("/#/jobs")
            page.fill("#username", "carol")
            page.fill("#password", "carol-password")
            page.click("#signin-button")
            expect(page.locator("#app")).to_be_visible()
            page.select_option("#kind", "checksum")
            with page.expect_response(lambda r: r.url.endswith("/api/uploads")
                                      and r.request.method == "POST") as uploaded:
                page.set_input_files("#arg-file-file", str(film))
            assert uploaded.value.status == 201
            ref = uploaded.value.json()["ref"]
            expect(page.locator('#kind-fields [data-arg="file"]')).to_have_value(ref)
            bar = page.locator("#kind-fields .upload-progress")
            expect(bar).to_be_visible()
            assert bar.evaluate("e => e.value") == 100
            expect(page.locator("#kind-fields .upload-status")).to_contain_text(
                "uploaded picked film.mkv")
            with page.expect_response(lambda r: r.url.endswith("/api/jobs")
                                      and r.request.method == "POST") as submitted:
                page.click("#submit-button")
            assert submitted.value.status == 201, submitted.value.text()
            job = submitted.value.json()
            assert job["args"] == {"file": ref}
            # The job is titled by the file's name, not by its reference; after a reload too.
            page.goto(f"/#/job/{job['id']}")
            expect(page.locator("#job-title")).to_contain_text("checksum picked film.mkv")
            page.reload()
            expect(page.locator("#job-title")).to_contain_text("checksum picked film.mkv")
            assert not errors, errors
        finally:
            browser.close()
    with server.client("carol") as carol:
        done = wait_job(carol, job["id"], "completed", "failed")
        assert done["state"] == "completed", done
