"""Questions asked of virtual cohorts: policy comparisons, sweeps, dose escalation, early risk, selection."""
