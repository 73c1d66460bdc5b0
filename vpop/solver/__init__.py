"""Time integration of the production-loss model (exponential Runge-Kutta)."""
