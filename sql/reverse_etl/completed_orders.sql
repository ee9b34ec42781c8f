-- description: One "Order Completed" track event per completed order (Segment e-commerce spec), sent once when the order first shows up as completed.
-- owner: team:revenue
-- call: track
-- mode: append
-- key: order_id
-- user_id: user_id
-- event: Order Completed
-- timestamp: completed_at
-- schedule: */30 * * * *
-- depends_on: orders
-- probe: updated_at
SELECT
    order_id,
    user_id,
    completed_at,
    amount AS revenue,
    currency,
    account_id
FROM orders
WHERE status = 'completed'
