"""GPU-aware job scheduler (not yet built; see the README status table)."""
