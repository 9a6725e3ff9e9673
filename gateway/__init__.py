"""OpenAI-compatible gateway with a disaggregated prefill/decode router for vLLM."""

__version__ = "0.1.0"
