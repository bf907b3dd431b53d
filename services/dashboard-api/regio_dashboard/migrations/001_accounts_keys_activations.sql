CREATE TABLE accounts (
    account_id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id),
    key_hash text NOT NULL UNIQUE,
    prefix text NOT NULL,
    last_four text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE activations (
    account_id text NOT NULL REFERENCES accounts (account_id),
    route text NOT NULL,
    region text NOT NULL,
    free_system_prompt text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, route, region)
);
