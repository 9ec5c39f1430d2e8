-- Node memory (issue 17): each heartbeat also writes what its running jobs' process trees
-- hold (running_rss_mb) and what its machine has available (memory_available_mb), so the
-- admin's nodes panel shows every node's. NULL: not known (a node of an older version).
ALTER TABLE nodes ADD COLUMN running_rss_mb DOUBLE PRECISION;
ALTER TABLE nodes ADD COLUMN memory_available_mb BIGINT;
