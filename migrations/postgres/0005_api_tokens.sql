-- API tokens (SPEC §12, issue #12). A token is stored only as the SHA-256
-- of its secret (`hash`, looked up on every request whose token is not
-- cached); `prefix` (`jobsd_<public id>`) is what lists show and what an
-- operator revokes by. Rows are never deleted: revoking sets `revoked_at`,
-- so a token once seen stays seen (under `--auth auto`, auth stays on).
CREATE TABLE api_tokens (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    prefix          text NOT NULL UNIQUE,
    hash            text NOT NULL UNIQUE,
    scope           text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
