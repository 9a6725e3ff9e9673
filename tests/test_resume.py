"""Mid-stream resume: a stream whose worker dies after bytes reached the client goes on from
another worker, with the same id, shape and text as the uninterrupted stream (simulated workers
continue a generation from its token ids, or from a chat's open assistant message, as vLLM does)."""

from __future__ import annotations

import pytest

from tests.conftest import sse_payloads, stream_text

PROMPT = "the resumed stream test prompt about rivers"
CHAT = [{"role": "user", "content": "tell me about rivers and stones"}]
NO_POLL = {"enabled": False}  # the test sets the workers' load itself


def _metric(gw, pool: str, outcome: str) -> float:
    return gw.gateway.telemetry.families.resumes.labels(pool, outcome)._value.get()


async def _replicas(sim, gateway, attempts: int = 1, both_fail: bool = False):
    dying = await sim(fail_after_tokens=3)
    other = await sim(fail_after_tokens=5) if both_fail else await sim()
    colo = await sim()
    gw = await gateway(
        [{"name": "dp", "workers": [dying.url, other.url], "resume_attempts": attempts}], worker_metrics=NO_POLL
    )
    gw.gateway.pools[0].endpoints[1].foreign = 5  # the dying one is chosen first
    return dying, other, colo, gw


def _errors(payloads: list) -> list:
    return [p for p in payloads if isinstance(p, dict) and "error" in p]


@pytest.mark.parametrize(
    ("route", "extra"), [("completions", {"prompt": PROMPT}), ("chat/completions", {"messages": CHAT})]
)
async def test_a_replica_dying_mid_stream_is_resumed_with_the_same_text_id_and_usage(
    sim, gateway, client, route, extra
):
    dying, other, colo, gw = await _replicas(sim, gateway)
    body = {"model": "sim-model", "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}, **extra}
    want = sse_payloads((await client.post(f"{colo.url}/v1/{route}", json=body)).content)
    resp = await client.post(f"{gw.url}/v1/{route}", json=body)
    got = sse_payloads(resp.content)
    assert _errors(got) == []
    assert stream_text(got) == stream_text(want) and len(stream_text(got).split()) == 12
    assert dying.stats.aborted == 1 and other.stats.completed == 1
    assert len({p["id"] for p in got if isinstance(p, dict)}) == 1
    assert [p["usage"] for p in got if isinstance(p, dict) and p["choices"] == []] == [
        p["usage"] for p in want if isinstance(p, dict) and p["choices"] == []
    ]
    chunks = [c for p in got if isinstance(p, dict) for c in p["choices"]]
    assert all(c.get("token_ids") is None for c in chunks)  # the gateway's own ask stays hidden
    if route.startswith("chat"):
        assert sum(1 for c in chunks if "role" in c["delta"]) == 1
        assert other.stats.last_request_body["continue_final_message"] is True
    else:
        assert isinstance(other.stats.last_request_body["prompt"], list)  # continued from token ids
    assert [c["finish_reason"] for c in chunks if c["finish_reason"]] == ["length"]
    assert _metric(gw, "dp", "resumed") == 1


async def test_a_pd_decode_dying_mid_stream_is_resumed_on_another_decode(sim, gateway, client):
    p = await sim(role="prefill")
    dying = await sim(role="decode", fail_after_tokens=4)
    other = await sim(role="decode")
    colo = await sim()
    pool = {"name": "pd", "kind": "pd", "protocol": "nixl", "prefill": [p.url], "decode": [dying.url, other.url]}
    gw = await gateway([{**pool, "resume_attempts": 2, "disaggregate_min_tokens": 0}], worker_metrics=NO_POLL)
    gw.gateway.pools[0].groups["decode"][1].foreign = 5
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 10, "stream": True}
    want = stream_text(sse_payloads((await client.post(f"{colo.url}/v1/completions", json=body)).content))
    got = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)
    assert _errors(got) == [] and stream_text(got) == want
    assert dying.stats.kv_received == 1 and other.stats.kv_received == 0  # continued as a plain request
    assert "kv_transfer_params" not in other.stats.last_request_body


async def test_resume_off_ends_the_stream_with_an_error_event_as_before(sim, gateway, client):
    dying, other, _, gw = await _replicas(sim, gateway, attempts=0)
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 12, "stream": True}
    got = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)
    assert len(_errors(got)) == 1 and other.stats.requests_total == 0
    assert "return_token_ids" not in dying.stats.last_request_body


async def test_attempts_are_bounded_then_the_error_event_stays(sim, gateway, client):
    dying, other, _, gw = await _replicas(sim, gateway, attempts=1, both_fail=True)
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 12, "stream": True}
    got = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)
    assert len(_errors(got)) == 1
    assert len(stream_text(got).split()) == 3 + 5  # what both workers sent before dying, once each
    assert _metric(gw, "dp", "resumed") == 1 and _metric(gw, "dp", "gave_up") == 1


@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": 1}])
async def test_streams_that_cannot_be_resumed_keep_the_error_event(sim, gateway, client, extra):
    dying, other, _, gw = await _replicas(sim, gateway)
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 12, "stream": True, **extra}
    got = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)
    assert len(_errors(got)) == 1 and other.stats.requests_total == 0


async def test_a_pd_decode_dying_before_its_first_event_is_resumed_too(sim, gateway, client):
    p = await sim(role="prefill")
    dying = await sim(role="decode", fail_after_tokens=0)
    other = await sim(role="decode")
    colo = await sim()
    pool = {"name": "pd", "kind": "pd", "protocol": "nixl", "prefill": [p.url], "decode": [dying.url, other.url]}
    gw = await gateway([{**pool, "resume_attempts": 1, "disaggregate_min_tokens": 0}], worker_metrics=NO_POLL)
    gw.gateway.pools[0].groups["decode"][1].foreign = 5
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 6, "stream": True}
    want = stream_text(sse_payloads((await client.post(f"{colo.url}/v1/completions", json=body)).content))
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    assert resp.status_code == 200, resp.text  # without resume: a 502 (a decode leg is not replayed)
    got = sse_payloads(resp.content)
    assert _errors(got) == [] and stream_text(got) == want and dying.stats.aborted == 1


async def test_each_prompt_of_a_list_is_resumed_on_its_own(sim, gateway, client):
    p = await sim(role="prefill")
    dying = await sim(role="decode", fail_after_tokens=2)
    other = await sim(role="decode")
    colo = await sim()
    pool = {"name": "pd", "kind": "pd", "protocol": "nixl", "prefill": [p.url], "decode": [dying.url, other.url]}
    gw = await gateway([{**pool, "resume_attempts": 1, "disaggregate_min_tokens": 0}], worker_metrics=NO_POLL)
    gw.gateway.pools[0].groups["decode"][1].foreign = 5  # both prompts go to the dying decode first
    body = {"model": "sim-model", "prompt": [PROMPT, PROMPT + " and stones"], "max_tokens": 6, "stream": True}
    want = sse_payloads((await client.post(f"{colo.url}/v1/completions", json=body)).content)
    got = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)

    def by_index(payloads: list) -> dict[int, str]:
        out: dict[int, str] = {}
        for s in payloads:
            for c in s["choices"] if isinstance(s, dict) else []:
                out[c["index"]] = out.get(c["index"], "") + c["text"]
        return out

    assert _errors(got) == [] and by_index(got) == by_index(want)
    assert dying.stats.aborted == 2 and _metric(gw, "pd", "resumed") == 2
