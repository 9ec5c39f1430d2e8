"""Storage backends behind one interface (`base.Store`), chosen by URL."""

from __future__ import annotations

from jobgate.store.base import SchemaTooNew, Store

__all__ = ["SchemaTooNew", "Store", "store_for_url"]


def store_for_url(url: str, durability: str = "full") -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`,
    `postgresql://user@host:port/database` (also `postgres://`)."""
    if url.startswith("sqlite://"):
        from jobgate.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError(f"storage.url: no file in {url!r} (try sqlite:///jobgate.db)")
        return SqliteStore(path, durability)
    if url.startswith(("postgresql://", "postgres://")):
        from jobgate.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"storage.url: unsupported database URL {url!r}")
