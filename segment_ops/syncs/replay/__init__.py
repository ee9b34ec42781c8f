"""Replay: a file of historical Segment calls validated and planned (`reader`), and its Dagster
definitions (`defs`)."""
