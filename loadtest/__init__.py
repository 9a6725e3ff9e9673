"""`pd-gateway loadtest`: an llmperf-compatible streaming load test against any OpenAI endpoint."""
