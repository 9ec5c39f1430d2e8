-- Costs that stay flat as the history grows (issue 19).
--
-- Listing pages (`GET /api/jobs`, newest first): a user's jobs, and a user's jobs in one
-- state, walk an index already in id order and stop at the page's end, instead of sorting
-- every job of the user. (No index on (state, id), as PostgreSQL has: without statistics,
-- SQLite would take it over jobs_finished for "completed in the last minute" and the like,
-- and count every completed job; an admin's page of one state walks the ids instead.)
CREATE INDEX jobs_owner_list ON jobs (owner, id);
CREATE INDEX jobs_owner_state_list ON jobs (owner, state, id);

-- How many jobs each state holds, kept by triggers as jobs come, move and go, so that
-- `GET /api/queue` reads a handful of rows instead of counting a million finished jobs.
-- SQLite has one writer at a time, so one row per state costs no contention.
CREATE TABLE job_counts (
    state TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO job_counts (state, n) SELECT state, count(*) FROM jobs GROUP BY state;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_update AFTER UPDATE OF state ON jobs
WHEN OLD.state IS NOT NEW.state
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO job_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
END;
