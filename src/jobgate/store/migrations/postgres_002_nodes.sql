-- Worker nodes: each registers when it starts, heartbeats while it runs (with its lease
-- renewals) and removes itself when it stops gracefully. A node is live while its
-- heartbeat is recent; a killed node's row stays until the heartbeat is long gone.
CREATE TABLE nodes (
    name         TEXT COLLATE "C" PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    slots        INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
