"""The official `openai` client against the simulated worker: what issue 12 found failing
(echo, logprobs, stop, invalid sampling values) works as against a real vLLM server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import openai
import pytest

from workers.sim import SimServer

StartSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def api(sim: StartSim) -> openai.AsyncOpenAI:
    s = await sim(model="m")
    return openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)


async def test_echo_logprobs_and_stop(api: openai.AsyncOpenAI) -> None:
    r = await api.completions.create(model="m", prompt="say something", max_tokens=4, echo=True, logprobs=2)
    choice = r.choices[0]
    assert choice.text.startswith("say something ")
    assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 4
    assert all(len(top) == 3 for top in choice.logprobs.top_logprobs or [])
    assert r.system_fingerprint and r.system_fingerprint.startswith("vllm-")
    first_word = choice.text.split()[2]
    stopped = await api.completions.create(model="m", prompt="say something", max_tokens=4, stop=[first_word])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == " "
    assert stopped.usage is not None and stopped.usage.completion_tokens == 1


async def test_chat_logprobs_and_stream_usage(api: openai.AsyncOpenAI) -> None:
    r = await api.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content is not None and len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content)
    stream = await api.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize(
    "extra", [{"temperature": "hot"}, {"temperature": 5}, {"top_p": 0}, {"n": 0}, {"logprobs": 50}]
)
async def test_invalid_sampling_values_are_400(api: openai.AsyncOpenAI, extra: dict) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await api.completions.create(model="m", prompt="x", max_tokens=2, extra_body=extra)
    assert info.value.status_code == 400


async def test_unknown_model_is_404(api: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await api.completions.create(model="other", prompt="x", max_tokens=2)
