-- description: Firmographics of every account (name, plan, seats, industry, MRR) on its Segment group; an account deleted from the warehouse gets its traits cleared.
-- owner: team:growth
-- call: group
-- mode: mirror
-- key: account_id
-- group_id: account_id
-- user_id: first_user_id
-- schedule: 15 * * * *
-- depends_on: accounts, customers
-- probe: updated_at
--
-- Segment needs a userId (or anonymousId) on every group call: the account is attached to its
-- earliest known customer. An account without any known customer is rejected, not sent under a
-- made-up user. DISTINCT ON works on DuckDB and PostgreSQL alike.
SELECT
    a.account_id,
    first_user.user_id AS first_user_id,
    a.name,
    a.plan,
    a.seats,
    a.industry,
    a.mrr,
    a.created_at
FROM accounts AS a
LEFT JOIN (
    SELECT DISTINCT ON (account_id) account_id, user_id
    FROM customers
    WHERE user_id IS NOT NULL AND account_id IS NOT NULL
    ORDER BY account_id, created_at, user_id
) AS first_user ON first_user.account_id = a.account_id
