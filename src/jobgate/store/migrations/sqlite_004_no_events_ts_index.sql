-- Old events are a prefix of `seq` (numbered in commit order), so pruning walks them from
-- the start; an index on ts cost a write for every event of every job.
DROP INDEX events_ts;
