"""segment_ops: a Dagster code location for the data syncs around a Segment CDP."""

__version__ = "0.1.0"
