"""Operations: run-failure and recovery alerts (`run_alerts`) and the hourly delivery-health check over
every ledger (`delivery_health`)."""
