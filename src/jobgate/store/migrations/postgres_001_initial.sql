-- PostgreSQL schema, version 1. Times are epoch seconds (as in SQLite); JSON is text.
-- Ids sort by creation in byte order: COLLATE "C" whatever the database's locale.
CREATE TABLE jobs (
    id               TEXT COLLATE "C" PRIMARY KEY,
    kind             TEXT COLLATE "C" NOT NULL,
    owner            TEXT COLLATE "C" NOT NULL,
    args             TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL,
    progress         DOUBLE PRECISION,
    message          TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1,
    created_at       DOUBLE PRECISION NOT NULL,
    run_at           DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION,
    finished_at      DOUBLE PRECISION,
    result           TEXT,
    error            TEXT,
    worker           TEXT,
    memory_mb        INTEGER NOT NULL DEFAULT 0,
    peak_memory_mb   DOUBLE PRECISION,
    depends_on       TEXT NOT NULL DEFAULT '[]',
    unique_key       TEXT,
    outputs          TEXT NOT NULL DEFAULT '[]',
    vt               BIGINT NOT NULL DEFAULT 0,
    lease_token      BIGINT NOT NULL DEFAULT 0,
    lease_expires_at DOUBLE PRECISION,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    pid              INTEGER,
    idempotency_key  TEXT,
    log_count        INTEGER NOT NULL DEFAULT 0
);
-- The dispatch order, over queued jobs only: claiming reads its first rows.
CREATE INDEX jobs_dispatch ON jobs (priority DESC, vt, id) WHERE state = 'queued';
CREATE INDEX jobs_owner_state ON jobs (owner, state, priority, vt);
CREATE INDEX jobs_run_at ON jobs (run_at) WHERE state = 'queued';
-- What runs now, for admission: read whole on every claim.
CREATE INDEX jobs_running ON jobs (owner, kind, memory_mb) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_unique_key ON jobs (owner, unique_key) WHERE unique_key IS NOT NULL;

CREATE TABLE logs (
    job_id TEXT COLLATE "C" NOT NULL,
    n      INTEGER NOT NULL,
    line   TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
);

-- The outbox: every event, numbered gap-free in commit order by event_seq (whose row
-- lock every transaction that writes events takes last, and holds until it commits).
CREATE TABLE events (
    seq    BIGINT PRIMARY KEY,
    type   TEXT NOT NULL,
    ts     DOUBLE PRECISION NOT NULL,
    job_id TEXT COLLATE "C",
    owner  TEXT COLLATE "C",
    data   TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts);

-- The highest event number ever given, pruned events included: never reused.
CREATE TABLE event_seq (
    one  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    last BIGINT NOT NULL
);
INSERT INTO event_seq (one, last) VALUES (TRUE, 0);

CREATE TABLE users (
    name          TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT,
    admin         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    DOUBLE PRECISION NOT NULL
);

CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY,
    "user"     TEXT COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL
);
