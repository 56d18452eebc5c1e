"""Benchmarks: scripts run as ``python -m bench.NAME``; not part of the installed package."""
