"""Imported at startup by every Python process of a vLLM NixlConnector worker on a CPU
host: the planner puts this folder on those workers' PYTHONPATH (workers/plan/launch.py),
and so do the real-vLLM test fixtures (tests/real/conftest.py).

NIXL's Python agent hardcodes `pthrDelay = 0`, so the UCX progress thread of every
NixlConnector server polls without sleeping and burns a whole core even when idle.
On a 2-core machine a P/D pair then starves everything else (requests took 5-30 s).
This hook wraps the binding's `nixlAgent` constructor so the progress thread waits
up to PD_NIXL_PTHR_DELAY_US (default 1000) between polls: idle CPU drops from ~100%
to ~1% of a core and transfers still complete promptly (the wait is cut short by
UCX events). It only patches when a NIXL binding module is actually imported.

It also keeps vLLM's NixlConnector from pinning its worker to one core: on CPU the
connector calls `os.sched_setaffinity(0, [last core of each NUMA node])` ("reserve
cores for start_load_kv"), so on a one-node host every P and every D worker shares
the same single core. A prefill spins (its engine steps every millisecond) as long as
it holds a KV lease, i.e. until the decode has read the blocks, and the decode on the
same core then got no CPU until the lease expired: the 30 s first-transfer stalls of
docs/real-vllm.md. That call is skipped unless PD_NIXL_KEEP_PIN=1.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading

_DELAY_US = int(os.environ.get("PD_NIXL_PTHR_DELAY_US", "1000"))
_PROG_THREAD = os.environ.get("PD_NIXL_PROG_THREAD", "1") == "1"
_KEEP_PIN = os.environ.get("PD_NIXL_KEEP_PIN", "0") == "1"
_PINNING_MODULE = "vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker"
_TARGETS = frozenset({"nixl_cu12._bindings", "nixl_cu13._bindings", "nixl_rocm._bindings"})
_busy = threading.local()


def _patch(module: object) -> None:
    real = getattr(module, "nixlAgent", None)
    if real is None or getattr(real, "_pd_pthr_delay", False):
        return

    def nixlAgent(name, config):  # noqa: N802 - same name as the wrapped class
        if config.pthrDelay == 0:
            config.pthrDelay = _DELAY_US
        if not _PROG_THREAD:
            config.useProgThread = False
        return real(name, config)

    nixlAgent._pd_pthr_delay = True  # type: ignore[attr-defined]
    module.nixlAgent = nixlAgent  # type: ignore[attr-defined]


class _PatchNixlOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _TARGETS or getattr(_busy, "on", False):
            return None
        _busy.on = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            _busy.on = False
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _unpinned(real):
    def sched_setaffinity(pid, mask):
        if pid == 0 and sys._getframe(1).f_globals.get("__name__") == _PINNING_MODULE:
            return None  # the NixlConnector's one-core pin: keep the cores this process had
        return real(pid, mask)

    return sched_setaffinity


if _DELAY_US > 0:
    sys.meta_path.insert(0, _PatchNixlOnImport())
if not _KEEP_PIN and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity = _unpinned(os.sched_setaffinity)
