"""The ledger's invariants, checked against one consistent snapshot of the database.

I1 cached balance = sum of the customer's postings      I2 every journal entry sums to zero
I3 cached held = sum of the account's open holds         I4 balance - held >= 0
I5 at most one settlement (and one charge) per transaction
I6 a settlement's charge equals what its journal entry took from the customer
I7 no settlement charges more than its hold, nor settles more tokens than the hold reserved
I8 paid and promotional credit are separate lots: the lots' remaining amounts sum to the
   balance and each equals its amount plus its movements; every payment has exactly one paid
   lot of its amount and at most one bonus lot, of floor(amount * percent / 100) from a
   promotion it qualified for; every charge, refund and claw-back took from the lots exactly
   what it took from the customer (refunds from paid lots, claw-backs from bonus lots)
L1 usage windows (usage limits) start on a UTC minute, day or month boundary of their kind,
   and their counters are never negative"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from regio_billing.journal import CUSTOMER_PREFIX

# (label, query returning one row per violation, format of the row's columns)
CHECKS: list[tuple[str, str, str]] = [
    (
        "I1",
        """
        SELECT coalesce(a.account_id, substr(p.ledger_account, length(%(prefix)s) + 1)),
               coalesce(a.balance_nano, 0), coalesce(p.total, 0)
        FROM billing.accounts a
        FULL JOIN (
            SELECT ledger_account, sum(amount_nano) AS total FROM billing.postings
            WHERE starts_with(ledger_account, %(prefix)s) GROUP BY ledger_account
        ) p ON p.ledger_account = %(prefix)s || a.account_id
        WHERE coalesce(a.balance_nano, 0) <> coalesce(p.total, 0)
        """,
        "account {0}: cached balance {1} != sum of postings {2}",
    ),
    (
        "I2",
        """
        SELECT journal_id, sum(amount_nano) FROM billing.postings
        GROUP BY journal_id HAVING sum(amount_nano) <> 0
        """,
        "journal entry {0} sums to {1}, not 0",
    ),
    (
        "I3",
        """
        SELECT a.account_id, a.held_nano, coalesce(h.total, 0)
        FROM billing.accounts a
        LEFT JOIN (
            SELECT account_id, sum(amount_nano) AS total FROM billing.holds
            WHERE status = 'open' GROUP BY account_id
        ) h ON h.account_id = a.account_id
        WHERE a.held_nano <> coalesce(h.total, 0)
        """,
        "account {0}: cached held {1} != sum of open holds {2}",
    ),
    (
        "I4",
        """
        SELECT account_id, balance_nano, held_nano FROM billing.accounts
        WHERE balance_nano - held_nano < 0
        """,
        "account {0}: balance {1} - held {2} is negative",
    ),
    (
        "I5",
        """
        SELECT coalesce(s.transaction_id, c.transaction_id), coalesce(s.n, 0), coalesce(c.n, 0)
        FROM (
            SELECT transaction_id, count(*) AS n FROM billing.settlements GROUP BY transaction_id
        ) s
        FULL JOIN (
            SELECT reference_key AS transaction_id, count(*) AS n FROM billing.journal
            WHERE kind = 'charge' GROUP BY reference_key
        ) c ON c.transaction_id = s.transaction_id
        WHERE coalesce(s.n, 0) <> 1 OR coalesce(c.n, 0) > 1
        """,
        "transaction {0}: {1} settlements and {2} charge entries (expected 1 and at most 1)",
    ),
    (
        "I6",
        """
        SELECT s.transaction_id, s.charged_nano, coalesce(-sum(p.amount_nano), 0)
        FROM billing.settlements s
        LEFT JOIN billing.postings p
            ON p.journal_id = s.journal_id AND p.ledger_account = %(prefix)s || s.account_id
        GROUP BY s.transaction_id, s.charged_nano
        HAVING s.charged_nano <> coalesce(-sum(p.amount_nano), 0)
        """,
        "transaction {0}: settlement charged {1} but the journal took {2} from the customer",
    ),
    (
        "I7",
        """
        SELECT s.transaction_id, s.charged_nano, h.amount_nano
        FROM billing.settlements s JOIN billing.holds h USING (transaction_id)
        WHERE s.charged_nano > h.amount_nano
        """,
        "transaction {0}: charged {1} exceeds its hold {2}",
    ),
    (
        "I7",
        """
        SELECT s.transaction_id, s.prompt_tokens, s.completion_tokens,
               h.max_prompt_tokens, h.max_completion_tokens
        FROM billing.settlements s JOIN billing.holds h USING (transaction_id)
        WHERE s.prompt_tokens > h.max_prompt_tokens
           OR s.completion_tokens > h.max_completion_tokens
        """,
        "transaction {0}: settled {1}+{2} tokens beyond the hold's bounds {3}+{4}",
    ),
    (
        "I8",
        """
        SELECT a.account_id, a.balance_nano, coalesce(l.total, 0)
        FROM billing.accounts a
        LEFT JOIN (
            SELECT account_id, sum(remaining_nano) AS total FROM billing.lots GROUP BY account_id
        ) l USING (account_id)
        WHERE a.balance_nano <> coalesce(l.total, 0)
        """,
        "account {0}: balance {1} != remaining credit of its lots {2}",
    ),
    (
        "I8",
        """
        SELECT l.id, l.remaining_nano, l.amount_nano + coalesce(sum(m.amount_nano), 0)
        FROM billing.lots l LEFT JOIN billing.lot_movements m ON m.lot_id = l.id
        GROUP BY l.id
        HAVING l.remaining_nano <> l.amount_nano + coalesce(sum(m.amount_nano), 0)
        """,
        "lot {0}: remaining {1} != amount plus movements {2}",
    ),
    (
        "I8",
        """
        SELECT p.idempotency_key, count(l.id)
        FROM billing.payments p
        LEFT JOIN billing.lots l ON l.payment_id = p.id AND l.kind = 'paid'
            AND l.amount_nano = p.amount_nano AND l.journal_id = p.journal_id
            AND l.account_id = p.account_id
        GROUP BY p.idempotency_key HAVING count(l.id) <> 1
        """,
        "payment {0}: {1} matching paid lots (expected exactly 1)",
    ),
    (
        "I8",
        """
        SELECT coalesce(j.reference_key, 'lot ' || l.id), coalesce(l.amount_nano, 0),
               coalesce(c.total, 0)
        FROM (SELECT id, reference_key FROM billing.journal WHERE kind = 'promotion') j
        FULL JOIN (SELECT * FROM billing.lots WHERE kind = 'promotional') l
            ON l.journal_id = j.id
        LEFT JOIN billing.payments p ON p.id = l.payment_id
        LEFT JOIN billing.promotions r ON r.id = l.promotion_id
        LEFT JOIN (
            SELECT journal_id, sum(amount_nano) AS total FROM billing.postings
            WHERE starts_with(ledger_account, %(prefix)s) GROUP BY journal_id
        ) c ON c.journal_id = j.id
        WHERE j.id IS NULL OR l.id IS NULL
           OR p.idempotency_key IS DISTINCT FROM j.reference_key
           OR l.account_id IS DISTINCT FROM p.account_id
           OR l.amount_nano IS DISTINCT FROM c.total
           OR l.amount_nano IS DISTINCT FROM p.amount_nano * r.bonus_percent / 100
           OR p.amount_nano < r.min_payment_nano
           OR NOT (p.created_at >= r.starts_at AND p.created_at < r.ends_at)
        """,
        "bonus of payment {0}: lot of {1}, granted {2}, not one qualifying bonus",
    ),
    (
        "I8",
        """
        SELECT j.kind, j.reference_key, coalesce(c.total, 0), coalesce(m.total, 0)
        FROM billing.journal j
        LEFT JOIN (
            SELECT journal_id, sum(amount_nano) AS total FROM billing.postings
            WHERE starts_with(ledger_account, %(prefix)s) GROUP BY journal_id
        ) c ON c.journal_id = j.id
        LEFT JOIN (
            SELECT m.journal_id, sum(m.amount_nano) AS total,
                   bool_and(l.kind = 'paid') AS all_paid,
                   bool_and(l.kind = 'promotional') AS all_promotional
            FROM billing.lot_movements m JOIN billing.lots l ON l.id = m.lot_id
            GROUP BY m.journal_id
        ) m ON m.journal_id = j.id
        WHERE (j.kind IN ('charge', 'refund', 'clawback')
               AND coalesce(c.total, 0) <> coalesce(m.total, 0))
           OR (j.kind IN ('payment', 'promotion') AND m.journal_id IS NOT NULL)
           OR (j.kind = 'refund' AND NOT m.all_paid)
           OR (j.kind = 'clawback' AND NOT m.all_promotional)
        """,
        "{0} {1}: took {2} from the customer but {3} from the lots",
    ),
    (
        "L1",
        """
        SELECT scope, window_kind, window_start, requests, tokens, spent_nano
        FROM billing.usage_windows
        WHERE window_start <> date_trunc(window_kind, window_start, 'UTC')
           OR requests < 0 OR tokens < 0 OR spent_nano < 0
        """,
        "usage window {0} {1} {2}: misaligned or negative ({3} requests, {4} tokens, {5} nano)",
    ),
]


async def find_violations(conn: AsyncConnection[TupleRow]) -> list[str]:
    violations: list[str] = []
    async with conn.transaction():
        # One snapshot for all checks, so that concurrent traffic cannot fake a violation.
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for label, query, message in CHECKS:
            cursor = await conn.execute(query, {"prefix": CUSTOMER_PREFIX})
            for row in await cursor.fetchall():
                violations.append(f"{label}: " + message.format(*row))
    return violations
