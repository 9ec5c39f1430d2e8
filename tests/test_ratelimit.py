"""Rate limits: the token buckets and the login back-off on their own (with a fake clock),
then on a real `jobgate serve`: 429 with Retry-After, hit and recovered."""

from __future__ import annotations

import time

import httpx
import pytest

from jobgate.config import Rate
from jobgate.ratelimit import FailureBackoff, RateLimiter, retry_after

# --- the pieces, with a fake clock ------------------------------------------------------------


def test_a_bucket_lets_a_burst_through_then_one_per_interval():
    limiter = RateLimiter(Rate(3, 6))  # 3 per 6 s: one every 2 s once the burst is spent
    assert [limiter.hit("bob", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("bob", now=100.0) == pytest.approx(2.0)
    assert limiter.hit("bob", now=101.0) == pytest.approx(1.0)
    assert limiter.hit("bob", now=102.0) == 0.0
    assert limiter.hit("bob", now=102.0) == pytest.approx(2.0)
    assert limiter.hit("carol", now=102.0) == 0.0  # per key
    # Refills to the burst size, never beyond it.
    assert [limiter.hit("bob", now=1000.0) for _ in range(4)][-1] > 0


def test_no_rate_means_no_limit():
    limiter = RateLimiter(None)
    assert all(limiter.hit("x", now=1.0) == 0.0 for _ in range(10_000))


def test_buckets_stay_bounded_forgetting_full_ones_first():
    limiter = RateLimiter(Rate(2, 1), max_keys=100)
    limiter.hit("busy", now=0.0)
    limiter.hit("busy", now=0.0)
    for i in range(1000):
        limiter.hit(f"ip{i}", now=0.0 + i * 0.01)
    assert len(limiter._buckets) <= 100


def test_bad_logins_wait_longer_after_each_miss_and_a_success_clears_them():
    backoff = FailureBackoff(free=2, max_s=8)
    now = 50.0
    for _ in range(2):
        assert backoff.wait_s("bob", now) == 0.0
        backoff.failed("bob", now)
    waits = []
    for _ in range(6):
        waits.append(backoff.wait_s("bob", now))
        now += waits[-1]
        assert backoff.wait_s("bob", now) == 0.0
        backoff.failed("bob", now)
    assert waits == [1, 2, 4, 8, 8, 8]  # doubling, capped at max_s
    assert backoff.wait_s("eve", now) == 0.0  # others are not slowed
    backoff.succeeded("bob")
    assert backoff.wait_s("bob", now) == 0.0
    backoff.failed("bob", now)
    assert backoff.wait_s("bob", now) == 0.0  # free failures again
    for _ in range(5):
        backoff.failed("bob", now)
    assert backoff.wait_s("bob", now + 17) == 0.0  # a quiet spell forgets


def test_retry_after_is_whole_seconds_and_never_zero():
    assert [retry_after(x) for x in (0.001, 0.5, 1.0, 1.2, 59.9)] == [1, 1, 1, 2, 60]


# --- on a real server --------------------------------------------------------------------------

def submit(server, user: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/jobs", json={"kind": "noop"},
                      headers={"Authorization": f"Bearer {server.tokens[user]}"})


def login(server, user: str, password: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/auth/token",
                      json={"username": user, "password": password}, timeout=30)


def refused(response: httpx.Response) -> int:
    """Checks a 429 in the contract's shape; returns its Retry-After."""
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    assert response.json()["error"]["message"]
    wait = int(response.headers["Retry-After"])
    assert wait >= 1
    return wait


def test_submits_per_user_hit_the_limit_and_recover(start_server):
    srv = start_server('[rate_limits]\nsubmit_per_user = "3/3s"\nsubmit_per_ip = "off"\n')
    assert [submit(srv, "bob").status_code for _ in range(3)] == [201, 201, 201]
    wait = refused(submit(srv, "bob"))
    assert wait <= 1 + 1  # one token every second
    assert submit(srv, "carol").status_code == 201  # per user: carol is not bob
    time.sleep(wait)
    assert submit(srv, "bob").status_code == 201  # recovered
    # Nothing was queued by the refused request.
    jobs = httpx.get(f"{srv.url}/api/jobs", headers={
        "Authorization": f"Bearer {srv.tokens['bob']}"}).json()["jobs"]
    assert len(jobs) == 4


def test_submits_per_address_count_every_user_from_it(start_server):
    srv = start_server('[rate_limits]\nsubmit_per_user = "off"\nsubmit_per_ip = "4/20s"\n')
    assert [submit(srv, u).status_code for u in ("bob", "bob", "carol", "alice")] == [201] * 4
    wait = refused(submit(srv, "carol"))
    assert 4 <= wait <= 5  # one every 5 s


def test_logins_per_address_are_limited_even_with_the_right_password(start_server):
    srv = start_server('[rate_limits]\nlogin_per_ip = "2/2s"\nlogin_per_user = "off"\n')
    assert login(srv, "bob", "bob-password").status_code == 200
    assert login(srv, "carol", "carol-password").status_code == 200
    wait = refused(login(srv, "bob", "bob-password"))
    time.sleep(wait)
    assert login(srv, "bob", "bob-password").status_code == 200


def test_logins_per_user_are_limited(start_server):
    srv = start_server('[rate_limits]\nlogin_per_ip = "off"\nlogin_per_user = "2/60s"\n'
                       "login_free_failures = 100\n")
    assert login(srv, "bob", "nope").status_code == 401
    assert login(srv, "bob", "bob-password").status_code == 200
    refused(login(srv, "bob", "bob-password"))
    assert login(srv, "carol", "carol-password").status_code == 200


def test_repeated_bad_logins_are_slowed_and_a_good_one_clears_it(start_server):
    srv = start_server('[rate_limits]\nlogin_per_ip = "off"\nlogin_per_user = "off"\n'
                       'login_free_failures = 2\nlogin_backoff_max = "1m"\n')
    assert [login(srv, "bob", "guess").status_code for _ in range(2)] == [401, 401]
    first = refused(login(srv, "bob", "guess"))  # not even checked: must wait
    assert first == 1
    time.sleep(first)
    assert login(srv, "bob", "guess").status_code == 401
    second = refused(login(srv, "bob", "bob-password"))  # the right one waits too
    assert second == 2  # twice as long
    assert login(srv, "carol", "carol-password").status_code == 200  # others unaffected
    time.sleep(second)
    assert login(srv, "bob", "bob-password").status_code == 200  # recovered
    assert login(srv, "bob", "guess").status_code == 401  # and the count starts over
    assert login(srv, "bob", "bob-password").status_code == 200


def login_from(server, address: str, user: str, password: str) -> httpx.Response:
    """A login from another loopback address (127.0.0.0/8 is all this machine's)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as c:
        return c.post(f"{server.url}/api/auth/token",
                      json={"username": user, "password": password})


def test_a_guesser_elsewhere_cannot_lock_the_real_user_out(start_server):
    srv = start_server('[rate_limits]\nlogin_per_user = "3/m"\nlogin_per_ip = "100/m"\n'
                       'login_free_failures = 10\n')
    statuses = [login_from(srv, "127.0.0.2", "bob", f"guess{i}").status_code
                for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]  # the guesser is throttled ...
    # ... and bob, from his own address, still signs in: his allowance is his own.
    assert [login_from(srv, "127.0.0.1", "bob", "bob-password").status_code
            for _ in range(3)] == [200, 200, 200]
    refused(login_from(srv, "127.0.0.1", "bob", "bob-password"))
    refused(login_from(srv, "127.0.0.2", "bob", "bob-password"))


def test_bad_password_back_off_falls_on_the_guessers_address_only(start_server):
    srv = start_server('[rate_limits]\nlogin_per_user = "off"\nlogin_per_ip = "100/m"\n'
                       'login_free_failures = 2\nlogin_backoff_max = "1m"\n')
    statuses = [login_from(srv, "127.0.0.2", "bob", f"guess{i}").status_code
                for i in range(4)]
    assert statuses == [401, 401, 429, 429]
    assert login_from(srv, "127.0.0.1", "bob", "bob-password").status_code == 200


def test_a_guesser_trying_many_users_from_one_address_is_slowed_there(start_server):
    srv = start_server('[rate_limits]\nlogin_per_user = "off"\nlogin_per_ip = "100/m"\n'
                       'login_free_failures = 2\nlogin_free_failures_per_ip = 4\n'
                       'login_backoff_max = "1m"\n')
    users = ["bob", "carol", "alice", "dave", "erin", "frank"]
    statuses = [login_from(srv, "127.0.0.3", u, "guess").status_code for u in users]
    assert statuses == [401, 401, 401, 401, 429, 429]
    refused(login_from(srv, "127.0.0.3", "carol", "carol-password"))
    # Other addresses are not held up.
    assert login_from(srv, "127.0.0.1", "carol", "carol-password").status_code == 200


def login_via(server, address: str, forwarded_for: str) -> int:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as c:
        return c.post(f"{server.url}/api/auth/token", headers={
            "X-Forwarded-For": forwarded_for},
            json={"username": "bob", "password": "bob-password"}).status_code


def test_behind_a_trusted_proxy_each_client_has_its_own_address(start_server):
    srv = start_server('[server]\ntrusted_proxies = ["127.0.0.9"]\n[rate_limits]\n'
                       'login_per_user = "off"\nlogin_per_ip = "2/m"\n')
    # Through the proxy: the address it names is the client's.
    assert [login_via(srv, "127.0.0.9", "203.0.113.5") for _ in range(3)] == [200, 200, 429]
    assert login_via(srv, "127.0.0.9", "203.0.113.6") == 200
    # From anywhere else the header is not believed: a client cannot pick its address.
    assert [login_via(srv, "127.0.0.2", f"198.51.100.{i}") for i in range(3)] == \
        [200, 200, 429]
