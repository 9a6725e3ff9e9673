"""Optional dependencies come as the package's extras; a feature that needs one says which.

`missing_extra` looks the modules up without importing them (a tokenizer library takes
seconds to import), so a config can be checked at start-up for what it will need.
"""

from __future__ import annotations

from importlib.util import find_spec

# extra -> the top-level modules it installs that the gateway imports
GATEWAY_EXTRAS: dict[str, tuple[str, ...]] = {
    "precise": ("transformers", "cbor2", "zmq", "msgspec"),
    "k8s": ("lightkube",),
    "tracing": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
}


def missing_extra(extra: str, modules: tuple[str, ...], feature: str) -> str | None:
    """None when every module is installed; else one line naming the extra to install."""
    absent = [m for m in modules if not _found(m)]
    if not absent:
        return None
    return f"{feature} needs the '{extra}' extra (missing: {', '.join(absent)}): pip install 'pd-gateway[{extra}]'"


def check_extra(extra: str, feature: str) -> None:
    """Raise ValueError (a config error) when `feature` cannot load for want of `extra`."""
    line = missing_extra(extra, GATEWAY_EXTRAS[extra], feature)
    if line is not None:
        raise ValueError(line)


def _found(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
        return False
