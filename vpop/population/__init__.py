"""Who the virtual patients are: covariates, between-patient variability, user patient tables."""
