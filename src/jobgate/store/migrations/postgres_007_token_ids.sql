-- API tokens get a public id (listable, revocable by it; never the secret or its hash), an
-- optional name ("laptop") and the time they were last used (updated at most once a
-- minute per token and API process, not on every request). Tokens made before this keep
-- working: each gets a random id here.
ALTER TABLE tokens ADD COLUMN id TEXT COLLATE "C";
ALTER TABLE tokens ADD COLUMN name TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at DOUBLE PRECISION;
UPDATE tokens SET id = substr(md5(random()::text || clock_timestamp()::text || hash), 1, 12)
    WHERE id IS NULL;
ALTER TABLE tokens ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX tokens_id ON tokens (id);
CREATE INDEX tokens_user ON tokens ("user", created_at);
-- A user's login generation: a login JWT carries the generation it was issued at and is
-- refused once the user's is higher (a new password, "log out everywhere", removal).
ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
