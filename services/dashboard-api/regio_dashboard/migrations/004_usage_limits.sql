-- Usage limits of accounts and of keys, set through the dashboard and enforced by billing.
-- NULL means no limit; a limit is always positive. Spend caps are nano-EUR.
ALTER TABLE accounts
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0),
    ADD COLUMN tokens_per_minute integer CHECK (tokens_per_minute > 0),
    ADD COLUMN max_concurrent_requests integer CHECK (max_concurrent_requests > 0),
    ADD COLUMN daily_spend_cap_nano bigint CHECK (daily_spend_cap_nano > 0),
    ADD COLUMN monthly_spend_cap_nano bigint CHECK (monthly_spend_cap_nano > 0);

ALTER TABLE api_keys
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0),
    ADD COLUMN tokens_per_minute integer CHECK (tokens_per_minute > 0),
    ADD COLUMN max_concurrent_requests integer CHECK (max_concurrent_requests > 0),
    ADD COLUMN daily_spend_cap_nano bigint CHECK (daily_spend_cap_nano > 0),
    ADD COLUMN monthly_spend_cap_nano bigint CHECK (monthly_spend_cap_nano > 0);
