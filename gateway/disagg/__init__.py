"""Prefill/decode protocols, one module each, keyed by the pool's `protocol`."""

from __future__ import annotations

from . import neuron_legacy, nixl

PROTOCOLS = {"nixl": nixl.serve, "neuron-legacy": neuron_legacy.serve}
