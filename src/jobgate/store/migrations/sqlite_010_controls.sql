-- Operator controls (controls.py): one row per part (paused, paused_kinds, limits, kinds,
-- users, drained), its value as JSON. Every change raises the version by one (the
-- controls' version is the largest); a row absent is its empty value, the config's limits.
CREATE TABLE controls (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL
);
