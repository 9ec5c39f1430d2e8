-- Dependencies and batches (issue 15). A job with `depends_on` waits, queued, until every
-- dependency completed: `waiting` counts the dependencies not yet ended (0: ready). A
-- waiting job is outside the dispatch order, so the indexes a claim and the fair turns
-- walk leave it out; it gets its turn when it becomes ready.
ALTER TABLE jobs ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN batch_id TEXT;
DROP INDEX jobs_dispatch;
CREATE INDEX jobs_dispatch ON jobs (priority DESC, vt, id) WHERE state = 'queued' AND waiting = 0;
DROP INDEX jobs_run_at;
CREATE INDEX jobs_run_at ON jobs (run_at) WHERE state = 'queued' AND waiting = 0;
CREATE INDEX jobs_waiting ON jobs (owner) WHERE state = 'queued' AND waiting > 0;
CREATE INDEX jobs_batch ON jobs (batch_id, state) WHERE batch_id IS NOT NULL;

-- Which job waits for which: read from the dependency's side when it ends.
CREATE TABLE job_deps (
    job_id TEXT NOT NULL,
    dep_id TEXT NOT NULL,
    PRIMARY KEY (job_id, dep_id)
) WITHOUT ROWID;
CREATE INDEX job_deps_dep ON job_deps (dep_id);

-- Jobs submitted together (POST /api/batches); `ended_at` is set, and batch.completed
-- emitted, once, when the last of its jobs ended.
CREATE TABLE batches (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    created_at REAL NOT NULL,
    total      INTEGER NOT NULL,
    pipeline   INTEGER NOT NULL DEFAULT 0,
    ended_at   REAL,
    state      TEXT
);
CREATE INDEX batches_owner ON batches (owner, id);
