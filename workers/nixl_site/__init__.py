"""A PYTHONPATH root for vLLM NixlConnector workers on CPU hosts: its sitecustomize
stops NIXL's progress thread from spinning (see sitecustomize.py)."""
