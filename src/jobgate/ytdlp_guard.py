"""yt-dlp with every connection it makes checked: `python -m jobgate.ytdlp_guard
[--allow=NETWORK]... YT-DLP-ARGS`.

The `url` argument of a job is checked when the job is submitted (`jobgate.arguments`),
but yt-dlp then follows HTTP redirects, fetches the media addresses a page names and
resolves host names again: any of them may lead to 127.0.0.1, 10.x or 169.254.169.254.
So this process checks where a socket is about to connect, after every redirect and
every DNS look-up, whatever library of yt-dlp opens it (urllib, requests, websockets):
`socket.socket.connect` refuses an address that is neither globally reachable
(`jobgate.addresses.is_public`) nor in one of the `--allow` networks, before any packet
is sent. A refusal prints one line, `[jobgate] refused a connection to ADDRESS ...`
(the download recipe makes it the job's permanent error), and fails the connection.

The downloaders that hand an address to another program (ffmpeg, curl, aria2c, wget,
rtmpdump) would connect where this process cannot see: they are refused outright, and
yt-dlp's native downloaders (HLS and DASH included) do the work. yt-dlp's request
handler on libcurl (`curl_cffi`, for impersonation) is removed for the same reason.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from jobgate.addresses import is_public, parse_address

REFUSED = "[jobgate] refused a connection to"
UNCHECKED_PROGRAM = ("yt-dlp is installed here as a program, not as a module of jobgate's "
                     "Python, so the addresses it is redirected to cannot be checked "
                     "(uv sync --extra media installs the module)")
_ALLOW = "--allow="


class AddressRefused(OSError):
    """A connection to an address the kind does not allow (an OSError, as the failed
    connection it is: yt-dlp reports it as a network error naming the address)."""


Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def allowed(host: str, networks: Networks) -> bool:
    """Whether a connection to the address `host` (a literal, as `connect` gets it) may
    be made: a globally reachable address, or one inside `networks`."""
    try:
        addr = parse_address(host)
    except ValueError:
        return False
    return is_public(addr) or any(addr.version == net.version and addr in net
                                  for net in networks)


def install(networks: Networks) -> None:
    """Check every connection of this process from now on (see the module's docstring)."""
    original = socket.socket.connect
    original_ex = socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # a local socket file: no address a URL can name
        host, port = str(address[0]), address[1]
        if not allowed(host, networks):
            shown = f"[{host}]" if ":" in host else host
            print(f"{REFUSED} {shown} port {port}: not an address this kind may reach "
                  "(a private, local or reserved address)", file=sys.stderr, flush=True)
            raise AddressRefused(f"jobgate refused a connection to {shown} port {port}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        original(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return original_ex(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    _refuse_other_programs()


def _refuse_other_programs() -> None:
    from yt_dlp.downloader.external import ExternalFD  # type: ignore[import-untyped]
    from yt_dlp.downloader.rtmp import RtmpFD  # type: ignore[import-untyped]
    from yt_dlp.networking import common  # type: ignore[import-untyped]

    def refuse(fd: Any, filename: str, info_dict: dict[str, Any]) -> bool:
        name = fd.get_basename()
        host = urlsplit(str(info_dict.get("url") or "")).hostname or "its address"
        print(f"{REFUSED} {host}: yt-dlp would hand the address to {name} (a live "
              f"stream, or a protocol it cannot fetch itself), whose connections jobgate "
              "cannot check", file=sys.stderr, flush=True)
        fd.report_error(f"jobgate does not let yt-dlp hand an address to {name}")
        return False

    ExternalFD.real_download = refuse
    RtmpFD.real_download = refuse
    common._REQUEST_HANDLERS.pop("CurlCFFI", None)


def main(argv: list[str]) -> int:
    networks = []
    rest = list(argv)
    while rest and rest[0].startswith(_ALLOW):
        networks.append(ipaddress.ip_network(rest.pop(0)[len(_ALLOW):], strict=False))
    import yt_dlp  # type: ignore[import-untyped]

    install(networks)
    yt_dlp.main(rest)  # exits with yt-dlp's own code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
