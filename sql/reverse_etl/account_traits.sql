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
-- made-up user. ROW_NUMBER() rather than DISTINCT ON, so the model runs on every warehouse (Snowflake,
-- BigQuery and Redshift have no DISTINCT ON).
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
    SELECT account_id, user_id
    FROM (
        SELECT
            account_id,
            user_id,
            ROW_NUMBER() OVER (PARTITION BY account_id ORDER BY created_at, user_id) AS nth
        FROM customers
        WHERE user_id IS NOT NULL AND account_id IS NOT NULL
    ) AS ranked
    WHERE nth = 1
) AS first_user ON first_user.account_id = a.account_id
