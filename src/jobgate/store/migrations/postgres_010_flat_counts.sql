-- Costs that stay flat as the history grows (issue 19).
--
-- Listing pages (`GET /api/jobs`, newest first): each common filter walks an index already
-- in id order and stops at the page's end, instead of sorting every job that matches
-- (a user's jobs, a user's jobs in one state, the jobs in one state).
CREATE INDEX jobs_owner_list ON jobs (owner, id);
CREATE INDEX jobs_owner_state_list ON jobs (owner, state, id);
CREATE INDEX jobs_state_list ON jobs (state, id);

-- How many jobs each state holds, so that `GET /api/queue` reads a few rows instead of
-- counting a million finished jobs. Nodes change states concurrently, and one counter row
-- per state would make every claim and finish wait on the others' (and deadlock when two
-- transactions take two states' rows in opposite orders); so each statement on jobs only
-- appends what it changed (rows no one else touches), and the nodes' heartbeats fold the
-- rows into one per state now and then (postgres.py `_FOLD_COUNTS`). A count is the sum.
CREATE TABLE job_count_deltas (
    state TEXT NOT NULL,
    n     BIGINT NOT NULL
);
INSERT INTO job_count_deltas (state, n) SELECT state, count(*) FROM jobs GROUP BY state;

CREATE FUNCTION job_counts_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_count_deltas (state, n)
            SELECT state, count(*) FROM new_rows GROUP BY state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_count_deltas (state, n)
            SELECT state, -count(*) FROM old_rows GROUP BY state;
    ELSE
        INSERT INTO job_count_deltas (state, n)
            SELECT state, sum(d) FROM (
                SELECT state, -1 AS d FROM old_rows
                UNION ALL SELECT state, 1 FROM new_rows) moved
            GROUP BY state HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_moved();
CREATE TRIGGER job_counts_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_moved();
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_moved();
