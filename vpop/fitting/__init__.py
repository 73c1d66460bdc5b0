"""Fitting vpop to data with NumPyro (docs/fitting.md).

* `vpop.fitting.data`: NONMEM-style long CSV of patient time courses and doses.
* `vpop.fitting.cohort_tables`: published cohort tables (published_cohorts.csv format)
  and their smoothed simulated likelihood.
* `vpop.fitting.model`: the hierarchical NumPyro model (non-centred IIV, vmapped solves).
* `vpop.fitting.infer`: SVI and NUTS, ArviZ output, diagnostics, posterior predictive.
* `vpop.cli.fit`: `vpop fit`.
"""
