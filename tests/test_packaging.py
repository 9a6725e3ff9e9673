"""What a plain install (no extras) meets: commands that need an extra say which, and
optional dependencies load only with the feature that needs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from pdcli.main import main

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = (
    "aiohttp",
    "rich",
    "matplotlib",
    "tokenizers",
    "transformers",
    "zmq",
    "msgspec",
    "cbor2",
    "lightkube",
    "httpx",
    "opentelemetry",
)


def test_loadtest_without_its_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    assert main(["loadtest", "--base-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'pd-gateway[loadtest]'" in err and "aiohttp" in err


@pytest.mark.parametrize(
    ("pool", "extra", "module"),
    [
        ({"policy": {"name": "precise_prefix", "tokenizer": "t"}}, "precise", "zmq"),
        ({"workers": [], "discovery": "kubernetes"}, "k8s", "lightkube"),
    ],
)
def test_config_needing_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, pool, extra, module) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    config = {"pools": [{"name": "p", "workers": ["http://127.0.0.1:9"], **pool}]}
    with pytest.raises(ConfigError, match=rf"pip install 'pd-gateway\[{extra}\]'"):
        parse_config(config)


def test_serving_the_default_loads_no_optional_dependency() -> None:
    """Every parser, the app on the embedded pools and a simulated worker: none of the extras' modules."""
    probe = f"""
import json, sys
from pdcli.main import _parser
from gateway.app import create_app
from gateway.config import parse_config
import workers.sim
_parser()
create_app(parse_config({{"pools": [
    {{"name": "a", "workers": ["http://127.0.0.1:9"], "policy": "prefix_aware"}},
    {{"name": "b", "kind": "pd", "protocol": "nixl", "prefill": ["http://127.0.0.1:9"], "decode": ["http://127.0.0.1:9"]}},
]}}))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {list(OPTIONAL)!r})))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
