"""Core allocation for the planner: hand each worker on a host a disjoint block of
NeuronCores (or GPUs), inside the range the environment already granted, if any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workers.topology import HostSpec, PlanError


@dataclass(frozen=True)
class CoreRequest:
    name: str  # worker name, for messages
    field: str  # topology path of the pool/role asking, e.g. "pools[1].decode"
    tp: int
    explicit: str | None  # a range the topology pins this worker to


def parse_cores(text: str) -> list[int]:
    """'0-31' or '0-3,8,10-11' (NEURON_RT_VISIBLE_CORES syntax) -> sorted core ids."""
    cores: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise PlanError(f"bad core range {text!r}; expected e.g. '0-31' or '0,2,4-7'")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise PlanError(f"bad core range {text!r}: {part} runs backwards")
        cores.update(range(first, last + 1))
    return sorted(cores)


def format_cores(cores: list[int]) -> str:
    """Sorted core ids -> the shortest range string ('0-31', '0-3,8')."""
    runs: list[list[int]] = []
    for c in cores:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def visible_var(host: HostSpec) -> str:
    return "CUDA_VISIBLE_DEVICES" if host.accelerator == "gpu" else "NEURON_RT_VISIBLE_CORES"


def allocate(host: HostSpec, requests: list[CoreRequest], env: Mapping[str, str]) -> list[list[int] | None]:
    """Cores per request, in order; None means "the whole host, do not pin".

    Explicit ranges are reserved first, then the rest go first-fit in order, so
    DP=2 x TP=32 on 64 cores gives 0-31 and 32-63 as in the DP tutorial.
    """
    if not requests:
        return []
    available, inherited = _available(host, env)
    _check_sizes(host, requests, available, inherited)
    taken: dict[int, str] = {}
    result: list[list[int] | None] = [
        _reserve(host, r, set(available), taken) if r.explicit else None for r in requests
    ]
    for i, r in enumerate(requests):
        if result[i] is None:
            result[i] = _first_fit(host, r, available, taken)
    only = requests[0]
    if len(requests) == 1 and only.tp == len(available) and not inherited and not only.explicit:
        return [None]  # owns the whole host: no pinning, as in the multi-instance DI seed
    return result


def _available(host: HostSpec, env: Mapping[str, str]) -> tuple[list[int], bool]:
    """Cores the planner may hand out on `host`, and whether the env restricted them.

    Kubernetes' Neuron device plugin sets NEURON_RT_VISIBLE_CORES for the pod;
    allocation then happens inside that range instead of overwriting it.
    """
    assert host.cores is not None
    var = visible_var(host)
    inherited = env.get(var, "").strip()
    if not inherited:
        return list(range(host.cores)), False
    try:
        cores = parse_cores(inherited)
    except PlanError as err:
        raise PlanError(f"{var} from the environment: {err}") from None
    if cores[-1] >= host.cores:
        raise PlanError(
            f"{var}={inherited} from the environment names cores beyond the {host.cores} of "
            f"host {host.name!r}; raise the host's 'cores' or fix {var}"
        )
    return cores, True


def _check_sizes(host: HostSpec, requests: list[CoreRequest], available: list[int], inherited: bool) -> None:
    n, total = len(available), host.cores or len(available)
    unit = "GPUs" if host.accelerator == "gpu" else "logical NeuronCores"
    source = f" (restricted by {visible_var(host)})" if inherited else ""
    for r in requests:
        if r.tp > n:
            raise PlanError(
                f"{r.field}: tp {r.tp} needs more {unit} than host {host.name!r} has "
                f"({n}{source}, lnc={host.lnc}); lower tp to at most {n} or use a bigger host"
            )
        if total % r.tp:  # the host's size, not the granted range: blocks stay aligned
            divisors = [d for d in range(1, total + 1) if total % d == 0]
            raise PlanError(
                f"{r.field}: tp {r.tp} does not divide the {total} {unit} of host {host.name!r}; use one of {divisors}"
            )
    need = sum(r.tp for r in requests)
    if need > n:
        parts = ", ".join(f"{r.name} tp={r.tp}" for r in requests)
        raise PlanError(
            f"host {host.name!r} has {n} {unit}{source} but its workers need {need} ({parts}); "
            "lower replicas/count or tp, or place workers on another host"
        )


def _reserve(host: HostSpec, req: CoreRequest, available: set[int], taken: dict[int, str]) -> list[int]:
    assert req.explicit is not None
    where = f"{req.field}.cores ({req.name})"
    try:
        cores = parse_cores(req.explicit)
    except PlanError as err:
        raise PlanError(f"{where}: {err}") from None
    if len(cores) != req.tp:
        raise PlanError(f"{where}: {req.explicit} has {len(cores)} cores but tp is {req.tp}")
    missing = [c for c in cores if c not in available]
    if missing:
        raise PlanError(
            f"{where}: cores {format_cores(missing)} are not available on host {host.name!r} "
            f"(available: {format_cores(sorted(available))})"
        )
    clash = sorted({taken[c] for c in cores if c in taken})
    if clash:
        raise PlanError(
            f"{where}: core range {req.explicit} overlaps the cores of {', '.join(clash)} "
            f"on host {host.name!r}; give each worker a disjoint range"
        )
    taken.update({c: req.name for c in cores})
    return cores


def _first_fit(host: HostSpec, req: CoreRequest, available: list[int], taken: dict[int, str]) -> list[int]:
    for start in range(len(available) - req.tp + 1):
        block = available[start : start + req.tp]
        if block[-1] - block[0] == req.tp - 1 and not any(c in taken for c in block):
            taken.update({c: req.name for c in block})
            return block
    free = [c for c in available if c not in taken]
    raise PlanError(
        f"{req.field}: no contiguous block of {req.tp} free cores left on host {host.name!r} "
        f"for {req.name} (free: {format_cores(free) or 'none'}); adjust the explicit 'cores'"
    )
