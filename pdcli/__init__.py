"""The `pd-gateway` command line: composes the gateway, the workers, the benchmarks and the
load test, which never import one another (`gateway/` and `workers/` stand alone)."""
