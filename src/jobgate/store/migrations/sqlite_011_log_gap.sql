-- Whole logs (issue 17): a capped log keeps its first and its last lines; the numbers of
-- the lines dropped between are one gap, log_dropped_first..log_dropped_last (NULL: none).
-- A log capped before kept its first lines only: its gap runs from past its last kept line
-- to its last counted line.
ALTER TABLE jobs ADD COLUMN log_dropped_first INTEGER;
ALTER TABLE jobs ADD COLUMN log_dropped_last INTEGER;
UPDATE jobs SET
    log_dropped_first = (SELECT coalesce(max(n), 0) + 1 FROM logs WHERE logs.job_id = jobs.id),
    log_dropped_last = log_count
WHERE log_count > (SELECT count(*) FROM logs WHERE logs.job_id = jobs.id);
