"""One package per sync: its Dagster assets, checks, jobs, schedules and sensors (`defs.py`), and the domain
code only that sync needs. No sync imports another; what they share is in `engine/` or `shared.py`."""
