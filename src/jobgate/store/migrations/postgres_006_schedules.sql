-- Each schedule's next due time ([schedules.NAME]). A node fires a due time only by moving
-- next_due on from the value it read (UPDATE ... WHERE next_due = that value), in the
-- transaction that records the firing and submits its job: each due time fires once
-- across nodes.
-- `spec` is what next_due was worked out from (cron, time zone, enabled): a change starts
-- the schedule afresh.
CREATE TABLE schedules (
    name       TEXT COLLATE "C" PRIMARY KEY,
    spec       TEXT NOT NULL,
    next_due   DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
-- What each firing became: fired (its job), skipped or failed (why); one row per due time.
CREATE TABLE schedule_firings (
    name     TEXT COLLATE "C" NOT NULL,
    due_at   DOUBLE PRECISION NOT NULL,
    owner    TEXT COLLATE "C" NOT NULL,
    fired_at DOUBLE PRECISION NOT NULL,
    outcome  TEXT NOT NULL,
    job_id   TEXT COLLATE "C",
    message  TEXT NOT NULL,
    catch_up BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (name, due_at)
);
CREATE INDEX schedule_firings_fired ON schedule_firings (fired_at);
