"""`jobgate user list|remove|passwd|admin` and `jobgate token`: the operator's commands on
users and API tokens. Like `jobgate user add`, they work on the configured database
directly (`--db` / `--config`), not through the API, so they run on the server's machine.

`jobgate token` takes one or two words:

- `jobgate token list NAME` lists NAME's tokens, `jobgate token revoke ID` revokes one:
  only when the first word is exactly `list` or `revoke`;
- otherwise `jobgate token NAME [--name LABEL]` prints a new token for NAME as its last
  line. A user whose name is `list` or `revoke` gets one with `jobgate token --user list`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jobgate.client import CliError
from jobgate.config import Settings
from jobgate.model import iso
from jobgate.terminal import printable

T = TypeVar("T")
SettingsOf = Callable[[argparse.Namespace], Settings]
_TOKEN_WORDS = ("list", "revoke")


def add_commands(sub: Any, users: Any, server_opts: Callable[[argparse.ArgumentParser], None],
                 settings_of: SettingsOf) -> None:
    """Add `user list|remove|passwd|admin` to the `user` subparsers (`users`) and the
    `token` command to the top-level ones (`sub`); `settings_of` reads a command's
    Settings from its `--config` / `--db`."""
    def local(func: Callable[[argparse.Namespace, SettingsOf], int]
              ) -> Callable[[argparse.Namespace], int]:
        return lambda args: func(args, settings_of)

    sp = users.add_parser("list", help="list users with their queued and running jobs")
    server_opts(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=local(cmd_user_list))

    sp = users.add_parser("remove", help="remove a user: their queued jobs are cancelled, "
                          "their running ones stopped")
    server_opts(sp)
    sp.add_argument("name")
    sp.add_argument("--delete-data", action="store_true",
                    help="also delete their finished jobs (logs, outputs) and uploads")
    sp.set_defaults(func=local(cmd_user_remove))

    sp = users.add_parser("passwd", help="set a user's password (ends their logins)")
    server_opts(sp)
    sp.add_argument("name")
    sp.add_argument("--password-stdin", action="store_true")
    sp.set_defaults(func=local(cmd_user_passwd))

    sp = users.add_parser("admin", help="make a user an admin (on) or not (off)")
    server_opts(sp)
    sp.add_argument("name")
    sp.add_argument("switch", choices=["on", "off"])
    sp.set_defaults(func=local(cmd_user_admin))

    sp = sub.add_parser(
        "token", help="print a new API token for a user (last line); "
        "`token list NAME`, `token revoke ID`",
        description="jobgate token NAME [--name LABEL]: a new API token for NAME, printed "
        "as the last line. jobgate token list NAME: NAME's tokens. jobgate token revoke "
        "ID: revoke a token. list and revoke are commands only as the first word; a user "
        "named so gets a token with --user NAME.")
    server_opts(sp)
    sp.add_argument("words", nargs="*", metavar="NAME | list NAME | revoke ID")
    sp.add_argument("--user", help="the user to make a token for (any name, even list)")
    sp.add_argument("--name", dest="label", metavar="LABEL",
                    help="what the token is for (e.g. laptop)")
    sp.add_argument("--json", action="store_true", help="with list: JSON")
    sp.set_defaults(func=local(cmd_token))


def _run(args: argparse.Namespace, settings_of: SettingsOf,
         action: Callable[[Any], Awaitable[T]], queue: bool = False) -> T:
    """`action(store)`, or `action(queue)` with `queue`, on the configured database."""
    from jobgate.queue import JobQueue
    from jobgate.store import store_for_url

    settings = settings_of(args)

    async def run() -> T:
        store = store_for_url(settings.storage.url, settings.storage.durability)
        if queue:
            job_queue = JobQueue(settings, store, positions=False)
            await job_queue.open()
            try:
                return await action(job_queue)
            finally:
                await job_queue.close()
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    from jobgate.store.base import NotFound

    try:
        return asyncio.run(run())
    except NotFound as exc:
        raise CliError(str(exc)) from None


def _time(ts: float | None) -> str:
    text = iso(ts)
    return "-" if text is None else text[:19].replace("T", " ")


def cmd_user_list(args: argparse.Namespace, settings_of: SettingsOf) -> int:
    from jobgate.users import user_json

    users = _run(args, settings_of, lambda store: store.list_users())
    if args.json:
        print(json.dumps([user_json(u) for u in users], indent=2))
        return 0
    width = max([4, *(len(u.name) for u in users)])
    print(f"{'NAME':{width}}  ADMIN  PASSWORD  QUEUED  RUNNING  TOKENS  CREATED")
    for u in users:
        print(printable(f"{u.name:{width}}  {'yes' if u.admin else 'no':5}  "
                        f"{'yes' if u.has_password else 'no':8}  {u.queued:6}  "
                        f"{u.running:7}  {u.tokens:6}  {_time(u.created_at)}"))
    return 0


def cmd_user_remove(args: argparse.Namespace, settings_of: SettingsOf) -> int:
    from jobgate.users import remove_user

    removal = _run(args, settings_of, lambda queue: remove_user(
        queue, args.name, delete_data=args.delete_data), queue=True)
    print(printable(removal.summary()))
    return 0


def _read_password(from_stdin: bool) -> str:
    from jobgate.users import check_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the passwords differ", 2)
    try:
        return check_password(password)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None


def cmd_user_passwd(args: argparse.Namespace, settings_of: SettingsOf) -> int:
    from jobgate.users import change_password

    password = _read_password(args.password_stdin)
    _run(args, settings_of, lambda store: change_password(store, args.name, password))
    print(printable(f"new password for {args.name}; their logins were ended "
                    "(API tokens stay)"))
    return 0


def cmd_user_admin(args: argparse.Namespace, settings_of: SettingsOf) -> int:
    from jobgate.users import set_admin

    admin = args.switch == "on"
    _run(args, settings_of, lambda store: set_admin(store, args.name, admin))
    print(printable(f"{args.name} is {'now an admin' if admin else 'no longer an admin'}"))
    return 0


def cmd_token(args: argparse.Namespace, settings_of: SettingsOf) -> int:
    words: list[str] = args.words
    if args.user is not None:
        if words:
            raise CliError("token --user NAME takes no other words", 2)
        return _new_token(args, settings_of, args.user)
    if not words:
        raise CliError("usage: jobgate token NAME [--name LABEL] | token list NAME | "
                       "token revoke ID", 2)
    if words[0] in _TOKEN_WORDS:
        if len(words) != 2:
            what = "NAME" if words[0] == "list" else "ID"
            raise CliError(f"usage: jobgate token {words[0]} {what}", 2)
        if words[0] == "list":
            return _list_tokens(args, settings_of, words[1])
        return _revoke(args, settings_of, words[1])
    if len(words) != 1:
        raise CliError(f"usage: jobgate token NAME [--name LABEL] (got {len(words)} words)",
                       2)
    return _new_token(args, settings_of, words[0])


def _new_token(args: argparse.Namespace, settings_of: SettingsOf, name: str) -> int:
    from jobgate.auth import new_named_token

    try:
        token, _ = _run(args, settings_of,
                        lambda store: new_named_token(store, name, args.label))
    except CliError as exc:  # no such user
        raise CliError(f"{exc}: add it first with `jobgate user add {name}`") from None
    label = f" ({args.label})" if args.label else ""
    print(printable(f"new API token for {name}{label} (shown once; export it as "
                    "JOBGATE_TOKEN):"))
    print(token)
    return 0


def _list_tokens(args: argparse.Namespace, settings_of: SettingsOf, name: str) -> int:
    from jobgate.users import token_json

    tokens = _run(args, settings_of, lambda store: store.list_tokens(name))
    if args.json:
        print(json.dumps([token_json(t) for t in tokens], indent=2))
        return 0
    width = max([4, *(len(t.name or "-") for t in tokens)])
    print(f"{'ID':12}  {'NAME':{width}}  {'CREATED':19}  LAST USED")
    for t in tokens:
        print(printable(f"{t.id:12}  {t.name or '-':{width}}  {_time(t.created_at):19}  "
                        f"{_time(t.last_used_at)}"))
    return 0


def _revoke(args: argparse.Namespace, settings_of: SettingsOf, token_id: str) -> int:
    from jobgate.users import revoke_token

    token = _run(args, settings_of, lambda store: revoke_token(store, token_id))
    label = f" ({token.name})" if token.name else ""
    print(printable(f"revoked token {token.id}{label} of {token.user}"))
    return 0
