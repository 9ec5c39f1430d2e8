"""Users and API tokens against real `jobgate serve` processes, on every backend: the admin
routes (`/api/users…`) and everyone's own tokens (`/api/tokens`), the CLI's `jobgate user
list|remove|passwd|admin` and `jobgate token NAME --name | list NAME | revoke ID` with their
exit codes and messages, and, on two API nodes of one PostgreSQL database, a revocation on
one node refused by the other on its next request (its open event stream ends too).

One server is shared by the module: each test makes the users it changes."""

from __future__ import annotations

import io
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server, wait_job
from jobgate import cli

CONFIG = """
[streams]
keepalive = 1
[worker]
cancel_grace_s = 2
[limits]
per_user_running = 1
[rate_limits]
login_per_user = "off"
login_per_ip = "off"
"""

_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("tokens"), CONFIG + TEST_KINDS,
                        backend) as srv:
        yield srv


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_user(server: Server, admin: bool = False) -> tuple[str, str]:
    """A new user (password NAME-password) made through the admin API: (name, API token)."""
    name = f"user{next(_names)}"
    with server.client("alice") as alice:
        made = alice.post("/api/users", json={"name": name, "password": f"{name}-password",
                                              "admin": admin})
        assert made.status_code == 201, made.text
        issued = alice.post(f"/api/users/{name}/tokens", json={"name": "first"})
        assert issued.status_code == 201, issued.text
    return name, str(issued.json()["token"])


def login(url: str, name: str, password: str | None = None) -> str:
    r = httpx.post(f"{url}/api/auth/token",
                   json={"username": name, "password": password or f"{name}-password"},
                   timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def me(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/api/me", headers=bearer(token), timeout=30)


def no_hashes(value: object) -> None:
    text = json.dumps(value)
    assert "scrypt" not in text and "hash" not in text, text


# --- the admin routes ---------------------------------------------------------------------

def test_a_non_admin_is_refused_every_admin_route(server):
    name, _ = new_user(server)
    with server.client("bob") as bob:
        for method, path, body in [
                ("GET", "/api/users", None),
                ("POST", "/api/users", {"name": "mallory"}),
                ("DELETE", f"/api/users/{name}", None),
                ("POST", f"/api/users/{name}/password", {"password": "long-enough"}),
                ("POST", "/api/users/bob/admin", {"admin": True}),
                ("POST", f"/api/users/{name}/logout", None),
                ("GET", f"/api/users/{name}/tokens", None),
                ("POST", f"/api/users/{name}/tokens", {"name": "x"})]:
            r = bob.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"]["code"] == "forbidden"
        assert me(server.url, server.tokens["bob"]).json()["admin"] is False
    assert me(server.url, new_user(server)[1]).status_code == 200  # nothing was changed


def test_an_admin_lists_and_adds_users_never_seeing_a_hash(server):
    name, token = new_user(server, admin=True)
    with server.client("alice") as alice:
        listed = alice.get("/api/users")
        assert listed.status_code == 200
        no_hashes(listed.json())
        mine = {u["name"]: u for u in listed.json()["users"]}[name]
        assert (mine["admin"], mine["has_password"], mine["queued"], mine["running"],
                mine["tokens"], mine["generation"]) == (True, True, 0, 0, 1, 0)
        assert alice.post("/api/users", json={"name": name}).status_code == 409
        short = alice.post("/api/users", json={"name": "shorty", "password": "short"})
        assert short.status_code == 422 and "at least 8" in short.json()["error"]["message"]
        bad = alice.post("/api/users", json={"name": "no spaces"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"
        for path in ("/api/users/nobody/password", "/api/users/nobody/admin",
                     "/api/users/nobody/logout"):
            body = {"admin": True} if path.endswith("admin") else {"password": "long-enough"}
            r = alice.post(path, json=None if path.endswith("logout") else body)
            assert r.status_code == 404 and r.json()["error"]["message"] == "no user nobody"
        assert alice.get("/api/users/nobody/tokens").status_code == 404
        assert alice.delete("/api/users/nobody").status_code == 404
    assert me(server.url, token).json() == {"name": name, "admin": True}


def test_a_new_password_ends_logins_but_not_api_tokens(server):
    name, token = new_user(server)
    old_login = login(server.url, name)
    assert me(server.url, old_login).status_code == 200
    with server.client("alice") as alice:
        r = alice.post(f"/api/users/{name}/password", json={"password": "a-new-password"})
        assert r.status_code == 200 and r.json()["generation"] == 1
        no_hashes(r.json())
    refused = me(server.url, old_login)
    assert refused.status_code == 401 and "log in again" in refused.json()["error"]["message"]
    assert me(server.url, token).status_code == 200
    assert me(server.url, login(server.url, name, "a-new-password")).status_code == 200


def test_log_out_everywhere_by_the_user_themselves(server):
    name, token = new_user(server)
    logins = [login(server.url, name) for _ in range(2)]
    r = httpx.post(f"{server.url}/api/users/{name}/logout", headers=bearer(logins[0]))
    assert r.status_code == 200, r.text
    assert [me(server.url, t).status_code for t in logins] == [401, 401]
    assert me(server.url, token).status_code == 200
    other, _ = new_user(server)  # and nobody else's
    r = httpx.post(f"{server.url}/api/users/{other}/logout", headers=bearer(token))
    assert r.status_code == 403


def test_admin_off_demotes_at_once(server):
    name, token = new_user(server, admin=True)
    jwt = login(server.url, name)
    assert httpx.get(f"{server.url}/api/users", headers=bearer(jwt)).status_code == 200
    with server.client("alice") as alice:
        r = alice.post(f"/api/users/{name}/admin", json={"admin": False})
        assert r.status_code == 200 and r.json()["admin"] is False
    for t in (token, jwt):
        assert me(server.url, t).json()["admin"] is False
        assert httpx.get(f"{server.url}/api/users", headers=bearer(t)).status_code == 403


def test_everyone_lists_makes_and_revokes_their_own_tokens(server):
    name, first = new_user(server)
    _, someone_elses = new_user(server)
    mine = httpx.Client(base_url=server.url, headers=bearer(first), timeout=30)
    with mine:
        made = mine.post("/api/tokens", json={"name": "laptop"})
        assert made.status_code == 201, made.text
        laptop = made.json()
        assert laptop["token"].startswith("jg_") and laptop["name"] == "laptop"
        assert me(server.url, laptop["token"]).json()["name"] == name  # used once now
        listed = mine.get("/api/tokens").json()["tokens"]
        no_hashes(listed)
        assert "token" not in json.dumps(listed)  # the secret is shown once, at its making
        by_name = {t["name"]: t for t in listed}
        assert set(by_name) == {"first", "laptop"}
        assert by_name["laptop"]["id"] == laptop["id"]
        assert by_name["laptop"]["last_used_at"] is not None
        assert by_name["first"]["last_used_at"] is not None  # this client's calls
        # someone else's token: not theirs to list or revoke (a 404, as for none at all)
        others = httpx.get(f"{server.url}/api/tokens", headers=bearer(someone_elses))
        other_id = others.json()["tokens"][0]["id"]
        assert mine.delete(f"/api/tokens/{other_id}").status_code == 404
        assert me(server.url, someone_elses).status_code == 200
        assert mine.delete("/api/tokens/not-an-id!").status_code == 404
        revoked = mine.delete(f"/api/tokens/{laptop['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked"]["id"] == laptop["id"]
        assert me(server.url, laptop["token"]).status_code == 401
        assert mine.delete(f"/api/tokens/{laptop['id']}").status_code == 404
    with server.client("alice") as alice:  # an admin revokes anyone's
        assert alice.delete(f"/api/tokens/{other_id}").status_code == 200
    assert me(server.url, someone_elses).status_code == 401


def _jobs_queued_and_running(server: Server, token: str) -> tuple[str, str]:
    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=30) as http:
        running = http.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 120}})
        queued = http.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 120}})
        assert running.status_code == queued.status_code == 201
        wait_job(http, running.json()["id"], "running")
        assert http.get(f"/api/jobs/{queued.json()['id']}").json()["state"] == "queued"
    return running.json()["id"], queued.json()["id"]


def test_removing_a_user_through_the_api_stops_their_jobs_and_their_credentials(server):
    name, token = new_user(server)
    jwt = login(server.url, name)
    running, queued = _jobs_queued_and_running(server, token)
    with server.client("alice") as alice:
        r = alice.delete(f"/api/users/{name}")
        assert r.status_code == 200, r.text
        assert (r.json()["cancelled"], r.json()["stopped"]) == ([queued], [running])
        assert {j["id"]: j["state"] for j in alice.get(
            "/api/jobs", params={"owner": name}).json()["jobs"]} == {
                running: "cancelled", queued: "cancelled"}
        assert name not in {u["name"] for u in alice.get("/api/users").json()["users"]}
    assert [me(server.url, t).status_code for t in (token, jwt)] == [401, 401]

    name, token = new_user(server)
    running, queued = _jobs_queued_and_running(server, token)
    with server.client("alice") as alice:
        r = alice.delete(f"/api/users/{name}", params={"delete_data": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["deleted_jobs"] == 2 and r.json()["data_deleted"] is True
        assert alice.get("/api/jobs", params={"owner": name}).json()["jobs"] == []
        assert alice.get(f"/api/jobs/{running}").status_code == 404


# --- the CLI -------------------------------------------------------------------------------

def test_user_list_shows_everyone_with_their_jobs(server):
    name, token = new_user(server)
    _jobs_queued_and_running(server, token)
    table = server.cli("user", "list", user=None)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "NAME", "ADMIN", "PASSWORD", "QUEUED", "RUNNING", "TOKENS", "CREATED"]
    row = next(r for r in map(str.split, table.stdout.splitlines()) if r[0] == name)
    assert row[:6] == [name, "no", "yes", "1", "1", "1"]
    listed = server.cli("user", "list", "--json", user=None)
    assert listed.returncode == 0, listed.stderr
    no_hashes(json.loads(listed.stdout))
    found = {u["name"]: u for u in json.loads(listed.stdout)}
    assert found["alice"]["admin"] is True and (found[name]["queued"], found[name]["running"]
                                                ) == (1, 1)
    removed = server.cli("user", "remove", name, user=None)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"removed user {name}; cancelled 1 queued job; "
                                     "stopped 1 running job; their jobs are kept")


def test_token_name_list_and_revoke(server):
    name, _ = new_user(server)
    issued = server.cli("token", name, "--name", "laptop", user=None)
    assert issued.returncode == 0, issued.stderr
    assert "(laptop)" in issued.stdout
    token = issued.stdout.strip().splitlines()[-1]
    assert token.startswith("jg_") and me(server.url, token).status_code == 200
    listed = server.cli("token", "list", name, user=None)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    laptop = next(r for r in rows if r[1] == "laptop")
    assert laptop[-1] != "-"  # last used: just now
    as_json = json.loads(server.cli("token", "list", name, "--json", user=None).stdout)
    no_hashes(as_json)
    assert {t["name"] for t in as_json} == {"first", "laptop"}
    revoked = server.cli("token", "revoke", laptop[0], user=None)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked token {laptop[0]} (laptop) of {name}"
    assert me(server.url, token).status_code == 401
    again = server.cli("token", "revoke", laptop[0], user=None)
    assert (again.returncode, again.stderr.strip()) == (1, f"jobgate: no token {laptop[0]}")


def test_token_words_parse_cleanly(server):
    made = server.cli("user", "add", "list", user=None)  # a user named like a command
    assert made.returncode == 0, made.stderr
    issued = server.cli("token", "--user", "list", "--name", "odd", user=None)
    assert issued.returncode == 0, issued.stderr
    assert me(server.url, issued.stdout.strip().splitlines()[-1]).json()["name"] == "list"
    listed = server.cli("token", "list", "list", user=None)  # `list` the command, of `list`
    assert listed.returncode == 0 and "odd" in listed.stdout


@pytest.mark.parametrize("argv, code, message", [
    (("token", "list"), 2, "usage: jobgate token list NAME"),
    (("token", "revoke"), 2, "usage: jobgate token revoke ID"),
    (("token", "revoke", "a", "b"), 2, "usage: jobgate token revoke ID"),
    (("token",), 2, "usage: jobgate token NAME"),
    (("token", "bob", "carol"), 2, "usage: jobgate token NAME [--name LABEL]"),
    (("token", "--user", "bob", "carol"), 2, "takes no other words"),
    (("token", "nobody"), 1, "no user nobody: add it first"),
    (("token", "list", "nobody"), 1, "no user nobody"),
    (("token", "revoke", "0123456789ab"), 1, "no token 0123456789ab"),
    (("user", "remove", "nobody"), 1, "no user nobody"),
    (("user", "admin", "nobody", "on"), 1, "no user nobody"),
    (("user", "admin", "bob", "maybe"), 2, "invalid choice"),
    (("user", "passwd", "nobody", "--password-stdin"), 1, "no user nobody")])
def test_bad_words_and_unknown_names_are_one_line_and_an_exit_code(
        server, argv, code, message, monkeypatch, capsys):
    # In this process (`cli.main`, as `jobgate` runs it): a dozen interpreters started
    # for one-line errors would cost minutes on a loaded machine; the commands that work
    # run as real processes above.
    monkeypatch.setenv("JOBGATE_CONFIG", str(server.config))
    monkeypatch.chdir(server.folder)
    monkeypatch.setattr(sys, "stdin", io.StringIO("long-enough-password\n"))
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    out = capsys.readouterr()
    assert exited.value.code == code, (out.out, out.err)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.err
    assert "Traceback" not in out.err and out.out == ""


def test_user_passwd_and_admin_from_the_cli(server):
    name, token = new_user(server)
    jwt = login(server.url, name)
    short = server.cli("user", "passwd", name, "--password-stdin", user=None, input="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    changed = server.cli("user", "passwd", name, "--password-stdin", user=None,
                         input="brand-new-password\n")
    assert changed.returncode == 0, changed.stderr
    assert "logins were ended" in changed.stdout
    assert me(server.url, jwt).status_code == 401
    assert me(server.url, token).status_code == 200
    assert me(server.url, login(server.url, name, "brand-new-password")).status_code == 200
    on = server.cli("user", "admin", name, "on", user=None)
    assert (on.returncode, on.stdout.strip()) == (0, f"{name} is now an admin")
    assert me(server.url, token).json()["admin"] is True
    off = server.cli("user", "admin", name, "off", user=None)
    assert (off.returncode, off.stdout.strip()) == (0, f"{name} is no longer an admin")
    assert me(server.url, token).json()["admin"] is False


def test_user_remove_delete_data_from_the_cli(server):
    name, token = new_user(server)
    running, queued = _jobs_queued_and_running(server, token)
    removed = server.cli("user", "remove", name, "--delete-data", user=None)
    assert removed.returncode == 0, removed.stderr
    assert "cancelled 1 queued job; stopped 1 running job; deleted 2 jobs and 0 uploads" \
        in removed.stdout
    with server.client("alice") as alice:
        assert alice.get(f"/api/jobs/{running}").status_code == 404
        assert alice.get(f"/api/jobs/{queued}").status_code == 404
    assert me(server.url, token).status_code == 401


# --- two API nodes on one PostgreSQL database ------------------------------------------

@pytest.fixture
def two_nodes(tmp_path: Path, postgres) -> Iterator[tuple[Server, Server]]:
    url = postgres.new_database()
    servers: list[Server] = []
    try:
        for i in range(2):
            folder = tmp_path / f"node{i}"
            folder.mkdir()
            server = Server(folder, CONFIG + TEST_KINDS, url)
            if servers:  # one signing key for both, as nodes sharing a data folder have
                key = folder / "data" / "secrets" / "jwt.key"
                key.parent.mkdir(parents=True, mode=0o700)
                key.write_bytes((servers[0].folder / "data" / "secrets" / "jwt.key"
                                 ).read_bytes())
                key.chmod(0o600)
            server.add_users()
            server.start(*(() if not servers else ("--no-worker",)))
            servers.append(server)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _stream_ends(url: str, token: str, act: Callable[[], None]) -> list[str]:
    with httpx.stream("GET", f"{url}/api/events", headers=bearer(token),
                      timeout=httpx.Timeout(20, read=10)) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")  # open
        act()
        return list(lines)  # ends: the server closes it


def test_a_revocation_on_one_node_is_refused_by_the_other_at_once(two_nodes):
    a, b = two_nodes
    name, token = new_user(a)
    assert me(b.url, token).status_code == 200
    with a.client("alice") as alice:
        [listed] = alice.get(f"/api/users/{name}/tokens").json()["tokens"]

        def revoke() -> None:
            assert alice.delete(f"/api/tokens/{listed['id']}").status_code == 200
            assert me(b.url, token).status_code == 401  # B's next request

        started = time.monotonic()
        rest = _stream_ends(b.url, token, revoke)
        assert ": closed: login revoked: the user or token is gone" in rest
        assert time.monotonic() - started < 15

    # a login ended on A (log out everywhere) is refused by B, and B's stream of it ends
    name, _ = new_user(a)
    jwt = login(b.url, name)
    assert me(a.url, jwt).status_code == 200  # one key: B's login holds on A

    def log_out() -> None:
        r = httpx.post(f"{a.url}/api/users/{name}/logout", headers=bearer(jwt))
        assert r.status_code == 200, r.text
        assert me(b.url, jwt).status_code == 401

    assert ": closed: login revoked: the user or token is gone" in _stream_ends(
        b.url, jwt, log_out)

    # and a user removed on A: B refuses their token on the next request
    name, token = new_user(a)
    assert me(b.url, token).status_code == 200
    with a.client("alice") as alice:
        assert alice.delete(f"/api/users/{name}").status_code == 200
    assert me(b.url, token).status_code == 401
