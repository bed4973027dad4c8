"""Live views (duckagents.live): the dashboard page in a real browser, ``duckagents top`` in a
pseudo-terminal, and the figures both fold from signals. Helpers are in support.py."""
