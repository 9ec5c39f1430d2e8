-- Running jobs are few (at most max_running), and jobs_running already lists them:
-- recovery reads them through it. An index on lease_expires_at cost a write on every
-- claim, finish and lease renewal.
DROP INDEX jobs_lease;
