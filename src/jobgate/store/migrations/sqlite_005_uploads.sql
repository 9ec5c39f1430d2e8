-- Files users uploaded for their jobs' `path` arguments (the bytes are in the data folder,
-- uploads/<owner's folder>/<id>); a row exists only for an upload that arrived whole.
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX uploads_owner ON uploads (owner, id);
