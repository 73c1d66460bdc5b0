"""Clinical management: pure (init, update) rules that decide doses from grades, time and biomarkers."""
