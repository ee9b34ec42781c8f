"""Operations: run-failure and recovery alerts (`run_alerts`), the hourly delivery-health check over
every ledger (`delivery_health`), and the preflight of every vendor's credentials (`preflight`)."""
