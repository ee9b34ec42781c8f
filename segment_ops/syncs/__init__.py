"""One module per sync: its assets, checks, jobs, schedules and sensors, declared over the engine."""

OWNER = "team:data-platform"
