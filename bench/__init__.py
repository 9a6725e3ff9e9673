"""Benchmarks of pd-gateway, run from a checkout (`python -m bench`); they measure the gateway,
so they may import it. Developer tools: they do not ship in the wheel."""
