"""The config file: defaults, shorthands, and errors that name the field."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config

POOL = {"name": "dp", "workers": ["http://127.0.0.1:9"]}


def test_defaults_are_what_the_readme_documents():
    config = parse_config({"pools": [POOL]})
    assert config.auth.metrics == "open" and config.auth.docs == "key"
    assert not config.tuning.huge_pages and not config.tuning.gc_freeze
    assert config.listen.http == "gateway"
    assert not config.pools[0].trust_kv_transfer_params
    assert config.pools[0].policy_for("replica").name == "least_outstanding"


def test_a_policy_may_be_given_by_name_alone():
    config = parse_config({"pools": [{**POOL, "policy": "least_outstanding"}]})
    assert config.pools[0].policy_for("replica").name == "least_outstanding"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pools": [{**POOL, "workers": ["127.0.0.1:9"]}]}, "pools.0.workers"),
        ({"pools": [POOL], "auth": {"metrics": "everyone"}}, "auth.metrics"),
        ({"pools": [POOL], "limits": {"max_headers": 1}}, "limits.max_headers"),
        ({"pools": [POOL], "listen": {"http": "h2"}}, "listen.http"),
        ({"pools": [POOL, POOL]}, "pool names must be unique"),
        ({"pools": [{**POOL, "prefill": ["http://a"]}]}, "pools.0"),
    ],
)
def test_an_invalid_config_names_the_field(change: dict, field: str):
    with pytest.raises(ConfigError) as err:
        parse_config(change)
    assert field in str(err.value)
