"""Running cohorts: configs, the cohort driver and its sinks (memory, Parquet), output tables, endpoints."""
