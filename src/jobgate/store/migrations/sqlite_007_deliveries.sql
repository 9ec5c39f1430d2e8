-- Deliveries (webhooks and notifications): an outbox written in the same transaction as
-- the final state that makes them, so a crash between a job's end and its delivery loses
-- nothing. `target` is the URL a submit named, or `config:<hash>` for one the config names
-- (resolved when sent: no notification secret is kept in the database).
CREATE TABLE job_webhooks (
    job_id     TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    owner           TEXT NOT NULL,
    channel         TEXT NOT NULL,
    source          TEXT NOT NULL,
    target          TEXT NOT NULL,
    event           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    due_at          REAL NOT NULL,
    lease_expires_at REAL,
    worker          TEXT,
    finished_at     REAL,
    last_status     INTEGER,
    last_response   TEXT,
    last_error      TEXT
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE state = 'pending';
CREATE INDEX deliveries_job ON deliveries (job_id, id);
CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    n           INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    duration_ms REAL NOT NULL,
    status      INTEGER,
    response    TEXT,
    error       TEXT,
    worker      TEXT,
    PRIMARY KEY (delivery_id, n)
);
