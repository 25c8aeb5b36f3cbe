"""Fleet telemetry on the hub: merge device summaries per cohort, statistics, drift alerts, gauges."""
