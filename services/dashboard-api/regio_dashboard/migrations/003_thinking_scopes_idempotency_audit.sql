-- Per-activation thinking behaviour (defaults keep existing activations as they were served).
ALTER TABLE activations
    ADD COLUMN thinking_default_effort text NOT NULL DEFAULT 'medium'
        CHECK (thinking_default_effort IN ('none', 'low', 'medium', 'high')),
    ADD COLUMN thinking_reasoning_output text NOT NULL DEFAULT 'reasoning_content'
        CHECK (thinking_reasoning_output IN ('reasoning_content', 'think_tags', 'hidden'));

-- Keys scoped to some activations ("route/region"); empty means all of the account's.
ALTER TABLE api_keys ADD COLUMN activations text[] NOT NULL DEFAULT '{}';

-- Idempotency-Key of creating calls: the first successful response, replayed on a retry.
-- `scope` is the caller (admin or owner account) and the operation; `status` is NULL while
-- the first request is still running.
CREATE TABLE idempotency_keys (
    scope text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash text NOT NULL,
    status integer,
    response_body text,
    secret_withheld boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, idempotency_key)
);

-- Manual credit adjustments by the admin: who, when, why, and what billing made of it.
CREATE TABLE audit_log (
    entry_id text PRIMARY KEY,
    actor text NOT NULL,
    action text NOT NULL,
    account_id text NOT NULL REFERENCES accounts (account_id),
    amount_nano bigint NOT NULL,
    reason text NOT NULL,
    outcome text NOT NULL DEFAULT 'pending' CHECK (outcome IN ('pending', 'applied', 'refused')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_by_creation ON audit_log (created_at, entry_id);
