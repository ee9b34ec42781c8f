-- description: Profile traits of every known customer (email, name, plan, country, account, lifetime value) on their Segment user, sent when they change.
-- owner: team:growth
-- call: identify
-- mode: upsert
-- key: user_id
-- user_id: user_id
-- traits: email, name, plan, country, account_id, lifetime_value, created_at
-- schedule: 0 * * * *
-- depends_on: customers
-- probe: updated_at
--
-- Leads without a user_id and the duplicated user_id in the demo data are rejected with their reason.
-- An address that is not an email is sent as null rather than polluting the profile.
SELECT
    user_id,
    CASE WHEN email LIKE '%_@_%._%' THEN lower(email) END AS email,
    name,
    plan,
    country,
    account_id,
    lifetime_value,
    created_at
FROM customers
