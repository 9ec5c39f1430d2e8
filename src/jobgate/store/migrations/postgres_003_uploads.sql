-- Files users uploaded for their jobs' `path` arguments (the bytes are in the data folder,
-- uploads/<owner's folder>/<id>); a row exists only for an upload that arrived whole.
CREATE TABLE uploads (
    id         TEXT COLLATE "C" PRIMARY KEY,
    owner      TEXT COLLATE "C" NOT NULL,
    name       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX uploads_owner ON uploads (owner, id);
