-- Settlement throughput (issue 4): less work per settled record in PostgreSQL.
-- Runs with search_path = billing.
--
-- 1. The balance of journal entries (I2) was checked by a deferred constraint trigger fired once
-- per posting row, each firing a PL/pgSQL call plus an index lookup: two per settled charge.
-- It becomes one check per INSERT statement over the entries that statement touched, read from
-- the statement's transition table. The rule it enforces: an entry's postings are written in
-- one statement (journal.post_entry and settlement.py do so), and after every statement each
-- entry it touched sums to zero. An entry written posting by posting now fails at its first
-- posting instead of at commit; nothing in billing writes one that way.
DROP TRIGGER postings_balanced ON postings;
DROP FUNCTION journal_entry_balanced();

CREATE FUNCTION journal_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    -- One index lookup per entry of the statement (postings' primary key), whatever its size.
    SELECT entry.journal_id, total.amount INTO unbalanced
    FROM (SELECT DISTINCT journal_id FROM new_postings) AS entry
    CROSS JOIN LATERAL (
        SELECT sum(p.amount_nano) AS amount FROM billing.postings p
        WHERE p.journal_id = entry.journal_id
    ) AS total
    WHERE total.amount <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance (sum %)',
            unbalanced.journal_id, unbalanced.amount
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER postings_balanced
    AFTER INSERT ON postings REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION journal_entries_balanced();

-- 2. Lots are updated by every settlement batch (remaining_nano). The partial index on
-- `remaining_nano > 0` named that column, so no update could be HOT and each one wrote a new
-- entry into all four of the table's indexes. A plain index on account_id (an account has a
-- few lots; the spent ones are filtered by the queries) and free room on each page let the
-- update stay on its page without touching any index. Accounts (updated by every reserve and
-- batch, never in an indexed column) get the same room.
DROP INDEX lots_open_account_idx;
CREATE INDEX lots_account_idx ON lots (account_id);
ALTER TABLE lots SET (fillfactor = 70);
ALTER TABLE accounts SET (fillfactor = 70);

-- 3. One index fewer per posting and per lot movement. Nothing reads them by their serial id:
-- postings are read by entry (the balance check, statements) and lot movements by entry and
-- lot, so the primary keys become (journal_id, id) and (journal_id, lot_id), replacing
-- postings_journal_idx and the movements' unique (journal_id, lot_id).
ALTER TABLE postings DROP CONSTRAINT postings_pkey;
ALTER TABLE postings ADD PRIMARY KEY (journal_id, id);
DROP INDEX postings_journal_idx;
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_pkey;
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_journal_id_lot_id_key;
ALTER TABLE lot_movements ADD PRIMARY KEY (journal_id, lot_id);

-- 4. Settlement takes charges from lots in SQL (settlement.py, CONSUME_LOTS); a charge the lots
-- cannot cover must fail its batch, as it did when billing computed the movements.
CREATE FUNCTION refuse_uncovered_charge(journal_id bigint, short_nano bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the lots cannot cover charge entry % (short by %)', journal_id, short_nano
        USING ERRCODE = 'check_violation';
END;
$$;

-- 5. A settlement's account is its hold's (copied from the locked hold row), and the hold's
-- foreign key already names an existing account. The settlement's own key check on accounts
-- cost a lookup per record and took a KEY SHARE lock on the account before the batch locked its
-- accounts in order; with another batch or the sweeper locking the same accounts, that closed
-- lock cycles (PostgreSQL broke them after deadlock_timeout by failing a batch).
ALTER TABLE settlements DROP CONSTRAINT settlements_account_id_fkey;
