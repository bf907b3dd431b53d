-- Access paths of the statements (statements.py): an account's entries, payments and usage in
-- a time window, newest first. Runs with search_path = billing.
--
-- Postings get the time of their entry, so that "this customer's entries between A and B,
-- newest first" is one index range scan (the journal knows the time but not the account).
-- A posting is written in the same transaction as its journal entry, so now() is the entry's
-- created_at; existing postings copy it from their entry (the append-only trigger is paused
-- for that one backfill, inside this migration's transaction).
ALTER TABLE postings ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE postings DISABLE TRIGGER postings_append_only;
UPDATE postings p SET created_at = j.created_at FROM journal j WHERE j.id = p.journal_id;
ALTER TABLE postings ENABLE TRIGGER postings_append_only;

-- Replaces postings_ledger_account_idx: same leading column, plus the statement order.
CREATE INDEX postings_account_time_idx ON postings (ledger_account, created_at DESC, journal_id DESC);
DROP INDEX postings_ledger_account_idx;

-- Replaces payments_account_idx likewise.
CREATE INDEX payments_account_time_idx ON payments (account_id, created_at DESC, id DESC);
DROP INDEX payments_account_idx;

-- Usage per day: an account's settlements in a time window.
CREATE INDEX settlements_account_time_idx ON settlements (account_id, created_at);
