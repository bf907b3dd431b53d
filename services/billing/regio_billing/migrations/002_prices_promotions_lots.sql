-- Versioned route prices, promotions, credit lots and refunds. Runs with search_path = billing.
--
-- Credit lots (I8): every payment opens one 'paid' lot of its amount; a payment that qualifies
-- for a promotion also opens exactly one 'promotional' lot (the bonus). A lot's remaining_nano
-- is a cache of amount_nano plus its movements (consumption by charges, refunds, claw-backs);
-- the remaining amounts of an account's lots sum to its balance. Charges consume promotional
-- lots first, then paid lots, oldest first within each kind (see lots.py).

-- A price change is a new version; holds keep the prices they were reserved with.
CREATE TABLE route_prices (
    id                bigserial PRIMARY KEY,
    route             text NOT NULL CHECK (route <> ''),
    input_price_nano  bigint NOT NULL CHECK (input_price_nano >= 0),
    output_price_nano bigint NOT NULL CHECK (output_price_nano >= 0),
    valid_from        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX route_prices_latest_idx ON route_prices (route, valid_from DESC, id DESC);
CREATE TRIGGER route_prices_append_only BEFORE UPDATE OR DELETE ON route_prices
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();

ALTER TABLE journal DROP CONSTRAINT journal_kind_check;
ALTER TABLE journal ADD CONSTRAINT journal_kind_check
    CHECK (kind IN ('payment', 'charge', 'promotion', 'refund', 'clawback'));

CREATE TABLE promotions (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (name <> ''),
    min_payment_nano bigint NOT NULL CHECK (min_payment_nano > 0),
    bonus_percent    integer NOT NULL CHECK (bonus_percent > 0 AND bonus_percent <= 1000),
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT promotions_window CHECK (ends_at > starts_at)
);

CREATE TABLE lots (
    id             bigserial PRIMARY KEY,
    account_id     text NOT NULL REFERENCES accounts (account_id),
    kind           text NOT NULL CHECK (kind IN ('paid', 'promotional')),
    payment_id     bigint NOT NULL REFERENCES payments (id),
    -- The promotion that granted a promotional lot; NULL for a paid lot.
    promotion_id   bigint REFERENCES promotions (id),
    -- The entry that credited the lot: the payment, or the promotion grant.
    journal_id     bigint NOT NULL UNIQUE REFERENCES journal (id),
    amount_nano    bigint NOT NULL CHECK (amount_nano > 0),
    remaining_nano bigint NOT NULL CHECK (remaining_nano >= 0 AND remaining_nano <= amount_nano),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Exactly one paid lot per payment, at most one bonus per payment.
    UNIQUE (payment_id, kind),
    CONSTRAINT lots_promotion_when_promotional CHECK ((kind = 'promotional') = (promotion_id IS NOT NULL))
);
CREATE INDEX lots_open_account_idx ON lots (account_id) WHERE remaining_nano > 0;

-- How each lot was used up: one row per (entry, lot), negative amounts.
CREATE TABLE lot_movements (
    id          bigserial PRIMARY KEY,
    lot_id      bigint NOT NULL REFERENCES lots (id),
    journal_id  bigint NOT NULL REFERENCES journal (id),
    amount_nano bigint NOT NULL CHECK (amount_nano < 0),
    UNIQUE (journal_id, lot_id)
);
CREATE INDEX lot_movements_lot_idx ON lot_movements (lot_id);
CREATE TRIGGER lot_movements_append_only BEFORE UPDATE OR DELETE ON lot_movements
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();

CREATE TABLE refunds (
    payment_id          bigint PRIMARY KEY REFERENCES payments (id),
    account_id          text NOT NULL REFERENCES accounts (account_id),
    refunded_nano       bigint NOT NULL CHECK (refunded_nano >= 0),
    clawed_back_nano    bigint NOT NULL CHECK (clawed_back_nano >= 0),
    -- NULL when the amount is zero (no journal entry for zero).
    refund_journal_id   bigint UNIQUE REFERENCES journal (id),
    clawback_journal_id bigint UNIQUE REFERENCES journal (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_journal_when_refunded CHECK ((refunded_nano > 0) = (refund_journal_id IS NOT NULL)),
    CONSTRAINT refunds_journal_when_clawed CHECK ((clawed_back_nano > 0) = (clawback_journal_id IS NOT NULL))
);

-- Existing payments become paid lots. Which credit is left is unknown, so the balance is
-- spread over the newest payments first (as if charges had consumed the oldest first).
INSERT INTO lots (account_id, kind, payment_id, journal_id, amount_nano, remaining_nano, created_at)
SELECT p.account_id, 'paid', p.id, p.journal_id, p.amount_nano,
       greatest(0, least(p.amount_nano,
                         a.balance_nano - (p.newer_or_same - p.amount_nano))),
       p.created_at
FROM (
    SELECT *, sum(amount_nano) OVER (PARTITION BY account_id ORDER BY id DESC) AS newer_or_same
    FROM payments
) p
JOIN accounts a USING (account_id)
ORDER BY p.id;
