"""Reverse ETL: SQL models sent as identify/track/group calls by diff (`sync`), and their Dagster
definitions (`defs`)."""
