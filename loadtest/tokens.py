"""Token counting: the served model's tokenizer (offline, from a local directory) or a word-count fallback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

log = logging.getLogger("pd_gateway.loadtest")


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int:
        """Tokens in `text`, special tokens (BOS) not counted."""

    def count_output(self, text: str) -> int:
        """A generated text's `number_output_tokens`: llmperf's `len(tokenizer.encode(text))`, i.e. with the
        special tokens the tokenizer adds (a Llama tokenizer's BOS: +1), unless turned off."""

    def truncate(self, text: str, tokens: int) -> str:
        """The longest prefix of `text` of at most `tokens` tokens."""


class HFTokenizer:
    """A Hugging Face fast tokenizer read from `DIR/tokenizer.json` (no network)."""

    def __init__(self, directory: str | Path, special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer

        path = Path(directory)
        file = path / "tokenizer.json" if path.is_dir() else path
        self._tok = Tokenizer.from_file(str(file))
        self._special = special_tokens
        self.name = str(directory) + ("" if special_tokens else " (output counted without special tokens)")

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids) if text else 0

    def count_output(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=self._special).ids)

    def truncate(self, text: str, tokens: int) -> str:
        enc = self._tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= tokens:
            return text
        return text[: enc.offsets[tokens - 1][1]] if tokens > 0 else ""


class WordCounter:
    """Fallback: one token per whitespace-separated word (what the simulated worker counts)."""

    name = "words (no --tokenizer)"

    def count(self, text: str) -> int:
        return len(text.split())

    def count_output(self, text: str) -> int:
        return self.count(text)

    def truncate(self, text: str, tokens: int) -> str:
        return " ".join(text.split()[:tokens])


def load_counter(directory: str | None, special_tokens: bool = True) -> TokenCounter:
    """The tokenizer in `directory`; without one, warn and count words."""
    if directory:
        return HFTokenizer(directory, special_tokens)
    log.warning(
        "no --tokenizer given: counting tokens as whitespace-separated words; figures in tokens "
        "(ITL, throughput, input/output counts) are approximate. Pass the served model's "
        "tokenizer directory for llmperf-comparable counts."
    )
    return WordCounter()
