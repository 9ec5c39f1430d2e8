CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    owner            TEXT NOT NULL,
    args             TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL,
    progress         REAL,
    message          TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1,
    created_at       REAL NOT NULL,
    run_at           REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    result           TEXT,
    error            TEXT,
    worker           TEXT,
    memory_mb        INTEGER NOT NULL DEFAULT 0,
    peak_memory_mb   REAL,
    depends_on       TEXT NOT NULL DEFAULT '[]',
    unique_key       TEXT,
    outputs          TEXT NOT NULL DEFAULT '[]',
    vt               INTEGER NOT NULL DEFAULT 0,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pid              INTEGER,
    idempotency_key  TEXT,
    log_count        INTEGER NOT NULL DEFAULT 0
);
-- The dispatch order, over queued jobs only: claiming reads its first rows.
CREATE INDEX jobs_dispatch ON jobs (priority DESC, vt, id) WHERE state = 'queued';
CREATE INDEX jobs_owner_state ON jobs (owner, state, priority, vt);
CREATE INDEX jobs_run_at ON jobs (run_at) WHERE state = 'queued';
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- What runs now, for admission: read whole on every claim, so it must not scan history.
CREATE INDEX jobs_running ON jobs (owner, kind, memory_mb) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_unique_key ON jobs (owner, unique_key) WHERE unique_key IS NOT NULL;

CREATE TABLE logs (
    job_id TEXT NOT NULL,
    n      INTEGER NOT NULL,
    line   TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;

-- The outbox: every event, in commit order; other processes read it by cursor.
CREATE TABLE events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    type   TEXT NOT NULL,
    ts     REAL NOT NULL,
    job_id TEXT,
    owner  TEXT,
    data   TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts);

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT,
    admin         INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL
);

CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    created_at REAL NOT NULL
);
