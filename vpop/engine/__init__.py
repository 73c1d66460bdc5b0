"""One patient's course of treatment (solve, read-outs, grading, policy, doses), batched over patients."""
