"""The simulated worker continues a generation as greedy vLLM does: from the prompt plus the text
(or the token ids) generated so far, and a chat from its open assistant message."""

from __future__ import annotations

from tests.conftest import sse_payloads
from workers.sim import completion_text

PROMPT = "a river runs past the stone mill"


def test_a_prompt_plus_its_generated_text_continues_the_generation():
    whole = completion_text(PROMPT, 0, 10)
    head = completion_text(PROMPT, 0, 4)
    assert head + completion_text(PROMPT + head, 0, 6) == whole


async def test_token_ids_come_back_and_continue_the_generation(sim, client):
    s = await sim()
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 10, "stream": True, "return_token_ids": True}
    chunks = [
        c
        for p in sse_payloads((await client.post(f"{s.url}/v1/completions", json=body)).content)
        if isinstance(p, dict)
        for c in p["choices"]
    ]
    prompt_ids = chunks[0]["prompt_token_ids"]
    ids = [i for c in chunks for i in c["token_ids"]]
    assert len(prompt_ids) == len(PROMPT.split()) and len(ids) == 10
    rest = {"model": "sim-model", "prompt": prompt_ids + ids[:3], "max_tokens": 7}
    answer = (await client.post(f"{s.url}/v1/completions", json=rest)).json()
    assert "".join(c["text"] for c in chunks[:3]) + answer["choices"][0]["text"] == completion_text(PROMPT, 0, 10)


async def test_a_chat_continues_its_final_assistant_message(sim, client):
    s = await sim()
    messages = [{"role": "user", "content": "tell me about the mill"}]
    whole = (
        await client.post(
            f"{s.url}/v1/chat/completions", json={"model": "sim-model", "messages": messages, "max_tokens": 8}
        )
    ).json()
    text = whole["choices"][0]["message"]["content"]
    head = " ".join(text.split()[:3])
    body = {
        "model": "sim-model",
        "messages": [*messages, {"role": "assistant", "content": " " + head}],
        "max_tokens": 5,
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    rest = (await client.post(f"{s.url}/v1/chat/completions", json=body)).json()
    assert " " + head + rest["choices"][0]["message"]["content"] == text
    both = {**body, "add_generation_prompt": True}
    refused = await client.post(f"{s.url}/v1/chat/completions", json=both)
    assert refused.status_code == 400 and "add_generation_prompt" in refused.json()["error"]["message"]
