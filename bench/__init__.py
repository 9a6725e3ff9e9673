"""Benchmarks for pd-gateway (not shipped in the wheel; run from the repository)."""
