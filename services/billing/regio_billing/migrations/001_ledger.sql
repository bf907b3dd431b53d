-- Billing ledger. Runs with search_path = billing.
--
-- Money is integer nano-EUR. The journal is double entry: each entry's postings sum to zero.
-- Sign convention: a positive posting increases that ledger account. The customer's ledger
-- account is 'customer:<account_id>'; 'payments' and 'revenue' are the counterparties.
-- accounts.balance_nano / held_nano are caches kept in the same transaction as the postings
-- and holds they summarise (see Ledger.check_invariants).

CREATE TABLE accounts (
    account_id   text PRIMARY KEY CHECK (account_id <> ''),
    balance_nano bigint NOT NULL DEFAULT 0,
    held_nano    bigint NOT NULL DEFAULT 0 CHECK (held_nano >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Holds can never promise more than the balance: the last line of defence against overdraft.
    CONSTRAINT accounts_available_not_negative CHECK (balance_nano - held_nano >= 0)
);

CREATE TABLE journal (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('payment', 'charge')),
    -- The idempotency key of the entry: the payment's key or the charge's transaction id.
    reference_key text NOT NULL CHECK (reference_key <> ''),
    memo          text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, reference_key)
);

CREATE TABLE postings (
    id             bigserial PRIMARY KEY,
    journal_id     bigint NOT NULL REFERENCES journal (id),
    ledger_account text NOT NULL CHECK (ledger_account <> ''),
    amount_nano    bigint NOT NULL CHECK (amount_nano <> 0)
);
CREATE INDEX postings_journal_idx ON postings (journal_id);
CREATE INDEX postings_ledger_account_idx ON postings (ledger_account);

-- Checked at commit, so that an entry may be written posting by posting.
CREATE FUNCTION journal_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
BEGIN
    SELECT sum(amount_nano) INTO total FROM billing.postings WHERE journal_id = NEW.journal_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'journal entry % does not balance (sum %)', NEW.journal_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER postings_balanced
    AFTER INSERT ON postings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION journal_entry_balanced();

-- The journal is append-only: corrections are new entries, never edits.
CREATE FUNCTION refuse_journal_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only (% on %)', TG_OP, TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();

CREATE TABLE holds (
    transaction_id    text PRIMARY KEY CHECK (transaction_id <> ''),
    account_id        text NOT NULL REFERENCES accounts (account_id),
    route             text NOT NULL,
    region            text NOT NULL,
    amount_nano       bigint NOT NULL CHECK (amount_nano >= 0),
    -- Prices at reserve time: settlement charges what the customer was quoted.
    input_price_nano  bigint NOT NULL CHECK (input_price_nano >= 0),
    output_price_nano bigint NOT NULL CHECK (output_price_nano >= 0),
    status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'settled', 'released')),
    release_reason    text,
    expires_at        timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    closed_at         timestamptz,
    CONSTRAINT holds_closed_when_not_open CHECK ((status = 'open') = (closed_at IS NULL))
);
CREATE INDEX holds_open_expiry_idx ON holds (expires_at) WHERE status = 'open';
CREATE INDEX holds_open_account_idx ON holds (account_id) WHERE status = 'open';

CREATE TABLE settlements (
    transaction_id    text PRIMARY KEY REFERENCES holds (transaction_id),
    account_id        text NOT NULL REFERENCES accounts (account_id),
    prompt_tokens     bigint NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens bigint NOT NULL CHECK (completion_tokens >= 0),
    charged_nano      bigint NOT NULL CHECK (charged_nano >= 0),
    billable          boolean NOT NULL,
    -- NULL when nothing was charged (no journal entry for zero).
    journal_id        bigint UNIQUE REFERENCES journal (id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT settlements_journal_when_charged CHECK ((charged_nano > 0) = (journal_id IS NOT NULL))
);

CREATE TABLE payments (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE CHECK (idempotency_key <> ''),
    account_id      text NOT NULL REFERENCES accounts (account_id),
    amount_nano     bigint NOT NULL CHECK (amount_nano > 0),
    reference       text NOT NULL DEFAULT '',
    journal_id      bigint NOT NULL UNIQUE REFERENCES journal (id),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_account_idx ON payments (account_id);
