-- Account-owner management credentials: shown once, stored as a SHA-256 hash.
CREATE TABLE management_tokens (
    token_id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id),
    token_hash text NOT NULL UNIQUE,
    prefix text NOT NULL,
    last_four text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Keyset pagination: lists are ordered by (created_at, id) or (route, region).
CREATE INDEX accounts_by_creation ON accounts (created_at, account_id);
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at, key_id);
CREATE INDEX management_tokens_by_account ON management_tokens (account_id, created_at, token_id);
