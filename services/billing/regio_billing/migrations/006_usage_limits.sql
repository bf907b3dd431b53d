-- Usage limits of keys and accounts (issue 9) and validation of reported usage.
-- Runs with search_path = billing.
--
-- A Reserve that carries limits (see limited_reserve.py) counts in usage_windows, under the
-- account row lock it takes anyway, so every billing replica and gateway shares exact counters.
-- Windows are UTC: the minute (requests admitted, tokens settled), the day and the calendar
-- month (nano-EUR charged). A scope is 'key:<key_id>' or 'account:<account_id>'. Rows are only
-- written for requests that carry limits; the hold sweeper deletes windows that no limit can
-- read any more (usage_windows.py: minute rows after an hour, day and month rows after 62 days).
CREATE TABLE usage_windows (
    scope        text NOT NULL CHECK (scope <> ''),
    window_kind  text NOT NULL CHECK (window_kind IN ('minute', 'day', 'month')),
    window_start timestamptz NOT NULL,
    requests     bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    tokens       bigint NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    spent_nano   bigint NOT NULL DEFAULT 0 CHECK (spent_nano >= 0),
    PRIMARY KEY (scope, window_kind, window_start)
) WITH (fillfactor = 70);  -- room for HOT updates: a minute row is bumped by every request
-- The sweeper's deletion of old windows.
CREATE INDEX usage_windows_age_idx ON usage_windows (window_kind, window_start);

-- Whose windows a settlement updates: the key (empty when the gateway sent none) and whether
-- the request carried limits at all (holds without limits cost settlement nothing extra).
-- The reserved token bounds let settlement refuse impossible usage (more than was reserved);
-- NULL on holds taken before this migration.
ALTER TABLE holds
    ADD COLUMN key_id text NOT NULL DEFAULT '',
    ADD COLUMN tracks_limits boolean NOT NULL DEFAULT false,
    ADD COLUMN max_prompt_tokens bigint CHECK (max_prompt_tokens >= 0),
    ADD COLUMN max_completion_tokens bigint CHECK (max_completion_tokens >= 0);
-- A key's open holds (concurrency limit, and what the key holds against its spend caps).
CREATE INDEX holds_open_key_idx ON holds (key_id) INCLUDE (amount_nano)
    WHERE status = 'open' AND tracks_limits;

-- True when the worker reported more tokens than the hold reserved: the settlement charged the
-- reserved bounds instead (and logged `usage_over_hold`).
ALTER TABLE settlements ADD COLUMN usage_over_hold boolean NOT NULL DEFAULT false;
