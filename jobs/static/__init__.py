"""The review page's static files (served from a fixed table by jobs.serve)."""
