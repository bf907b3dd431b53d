-- Manual credit adjustments by the dashboard's admin (adjustments.py): journal entries of kind
-- 'adjustment' against the 'adjustments' ledger account. Runs with search_path = billing.
ALTER TABLE journal DROP CONSTRAINT journal_kind_check;
ALTER TABLE journal ADD CONSTRAINT journal_kind_check
    CHECK (kind IN ('payment', 'charge', 'promotion', 'refund', 'clawback', 'adjustment'));
