"""Fullstory + Segment: frustration signals from Fullstory Streams as Segment track calls, and a per-user
experience score as an identify trait (the warehouse traits that go to Fullstory's users API are reverse-ETL
models with `destination: fullstory_users`)."""
