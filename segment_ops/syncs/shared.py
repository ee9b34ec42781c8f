"""What every sync's Dagster definitions share: the owner of their assets, and the warning filter below."""

import warnings

import dagster as dg

OWNER = "team:data-platform"

# `backfill_policy` is marked beta in Dagster 1.13 yet is the documented way to run a range of partitions in
# one run (audit-trail and Pendo backfills); its warning would print on every load of the code location.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
