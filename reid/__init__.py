"""Wildlife re-identification: the domain library (no Ray in here; usable from a notebook)."""

__version__ = "0.1.0"
