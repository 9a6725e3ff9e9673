"""A request's prompt as the worker tokenizes it (the served model's tokenizer and chat template)."""

from __future__ import annotations

from typing import Any


class PromptTokenizer:
    """Completions: the prompt with the tokenizer's special tokens (BOS), as vLLM encodes it;
    token-id prompts as given. Chat: the chat template with the generation prompt, rendered
    to text and encoded without adding special tokens again (vLLM's chat path)."""

    def __init__(self, name_or_path: str) -> None:
        from transformers import AutoTokenizer  # heavy: only for precise_prefix

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)

    def __call__(self, route: str, body: dict[str, Any]) -> list[int]:
        if route == "chat":
            text = self.tokenizer.apply_chat_template(
                body.get("messages") or [], add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return list(prompt)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            return list(prompt[0])
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        return list(self.tokenizer.encode(prompt if isinstance(prompt, str) else ""))
