-- API tokens: PostgreSQL's migrations/postgres/0005_api_tokens.sql in
-- SQLite's types (timestamps INTEGER microseconds since the epoch, the id
-- its hyphenated TEXT). Only the SHA-256 of a token's secret is stored.
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    prefix          TEXT NOT NULL UNIQUE,
    hash            TEXT NOT NULL UNIQUE,
    scope           TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    revoked_at      INTEGER,
    last_used_at    INTEGER
) STRICT;
