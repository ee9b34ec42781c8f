"""The operators' subcommands of `segment-ops` beyond running syncs: each module adds its parsers with
`register(subcommands)` and does its imports lazily, so `segment-ops --help` stays fast."""
