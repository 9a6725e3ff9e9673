"""workers/nixl_site/sitecustomize.py keeps vLLM's NixlConnector from pinning a CPU worker
to one core (which made a spinning prefill starve its decode; docs/real-vllm.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from workers.plan.launch import NIXL_CPU_SITE

# What the connector does on CPU (base_worker.py): pin the calling thread to the last core.
PROBE = """
import os
before = sorted(os.sched_getaffinity(0))
g = {"__name__": "vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker", "os": os}
exec("def pin(cores): os.sched_setaffinity(0, cores)", g)
g["pin"]([before[-1]])
print(sorted(os.sched_getaffinity(0)) == before)
os.sched_setaffinity(0, [before[0]])  # anyone else still pins
print(sorted(os.sched_getaffinity(0)) == [before[0]])
"""


def run_probe(**env: str) -> list[str]:
    full = {**os.environ, "PYTHONPATH": NIXL_CPU_SITE, **env}
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell a pin apart")
def test_the_nixl_connectors_one_core_pin_is_skipped_and_other_pins_are_not() -> None:
    assert run_probe() == ["True", "True"]
    assert run_probe(PD_NIXL_KEEP_PIN="1") == ["False", "True"]  # the opt-out restores vLLM's pin
