-- description: Warehouse-only traits (plan, account tier, lifecycle stage, lifetime value) on each customer's Fullstory user, so sessions can be searched and segmented by them.
-- owner: team:growth
-- call: identify
-- mode: upsert
-- key: user_id
-- user_id: user_id
-- destination: fullstory_users
-- traits: email, display_name, plan, account_tier, lifecycle_stage, lifetime_value
-- schedule: 30 * * * *
-- depends_on: customers, accounts
-- probe: updated_at
--
-- Upserted through Fullstory's users API (uid = user_id; email and display_name as the user's fields, the
-- rest as properties), in batch imports for many users. Traits Segment already holds reach Fullstory through
-- Segment's own Fullstory destination: this model is for what lives only in the warehouse. Customers without
-- a user_id are rejected with their reason (a Fullstory uid is the Segment userId).
SELECT
    c.user_id,
    CASE WHEN c.email LIKE '%_@_%._%' THEN lower(c.email) END AS email,
    c.name AS display_name,
    c.plan,
    CASE WHEN a.mrr >= 5000 THEN 'enterprise'
         WHEN a.mrr >= 1000 THEN 'growth'
         WHEN a.mrr IS NOT NULL THEN 'starter' END AS account_tier,
    CASE WHEN c.lifetime_value = 0 THEN 'trial'
         WHEN c.lifetime_value < 1000 THEN 'active'
         ELSE 'loyal' END AS lifecycle_stage,
    c.lifetime_value
FROM customers AS c
LEFT JOIN accounts AS a ON a.account_id = c.account_id
