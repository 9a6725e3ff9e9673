"""Benchmarks for pd-gateway, shipped as `pd-gateway bench` (they measure the gateway, so they may import it)."""
