#!/usr/bin/env python3
"""Build a tiny random-weight LlamaForCausalLM + tokenizer + chat template locally.

No hub access: the tokenizer is trained on generated English-ish text and the
weights are drawn from a seeded numpy generator, so every run writes byte-identical
files.  The result is served by real vLLM (CPU) in tests/real.

    python scripts/make_tiny_model.py [--out .models/tiny-llama] [--force] [--check]

Design choices (see docs/real-vllm.md):
  * head_dim 32: the smallest head size vLLM's CPU attention backend supports.
  * float32: exact and deterministic on CPU; the model is too small for bf16 to matter.
  * weights ~ N(0, 1/fan_in) so attention contributes O(1) to the residual stream:
    the continuation depends on the whole prompt, which makes a broken KV transfer
    visible in greedy output.
  * lm_head rows of the special tokens, and of byte tokens that are not printable
    ASCII, are zero (logit 0 vs. ~N(0,1) for the rest), so greedy decoding never
    emits EOS/EOT or partial UTF-8: `max_tokens` bounds the output length exactly
    and streamed text concatenates to the non-streamed text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np

RECIPE_VERSION = 1
SEED = 1234
VOCAB_SIZE = 1024
HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 32
MAX_POS = 2048

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
HDR_START, HDR_END, PAD = "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, HDR_START, HDR_END, EOT, PAD]  # ids 0..5

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

WEIGHTS_FILE = "model.safetensors"
STAMP_FILE = "tiny-model.stamp.json"
OUTPUT_FILES = [
    "config.json",
    "generation_config.json",
    WEIGHTS_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]

_SUBJECTS = "the cat|a dog|my friend|the old man|a small bird|the teacher|our team|the river|a robot|the city".split(
    "|"
)
_VERBS = "sees|likes|builds|finds|carries|watches|follows|paints|opens|remembers|sends|reads".split("|")
_OBJECTS = "a red ball|the long road|some bread|the blue door|a quiet song|the green hill|an open window|the last train|a bright star|the warm soup".split(
    "|"
)
_TAILS = "today|at night|in the morning|with care|very slowly|again and again|near the sea|after the rain|before dinner|without a word".split(
    "|"
)
_EXTRA = "hello world what is the answer to this question please tell me a story about numbers one two three four five six seven eight nine ten zero".split()


def corpus(seed: int = SEED, n: int = 4000) -> list[str]:
    """Deterministic English-ish sentences, plus digits and punctuation."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
        sentence = " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ";"])
        extra = " ".join(rng.choice(_EXTRA) for _ in range(rng.randint(0, 6)))
        lines.append(f"{sentence} {extra} {rng.randint(0, 9999)}".strip())
    return lines


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok


def muted_ids(tok) -> list[int]:
    """Special tokens and tokens that do not decode to printable ASCII on their own."""
    muted = []
    for i in range(tok.get_vocab_size()):
        text = tok.decode([i], skip_special_tokens=False)
        if tok.id_to_token(i) in SPECIAL_TOKENS or not text or not all(32 <= ord(c) < 127 for c in text):
            muted.append(i)
    return muted


def build_weights(muted: list[int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)

    def lin(out_f: int, in_f: int) -> np.ndarray:
        return rng.normal(0.0, in_f**-0.5, size=(out_f, in_f)).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": rng.normal(0.0, 1.0, size=(VOCAB_SIZE, HIDDEN)).astype(np.float32)
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = lin(HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = lin(HIDDEN, HEADS * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = lin(INTERMEDIATE, HIDDEN)
        w[p + "mlp.up_proj.weight"] = lin(INTERMEDIATE, HIDDEN)
        w[p + "mlp.down_proj.weight"] = lin(HIDDEN, INTERMEDIATE)
        w[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    w["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    lm_head = lin(VOCAB_SIZE, HIDDEN)
    lm_head[muted] = 0.0  # greedy never picks these (see module doc)
    w["lm_head.weight"] = lm_head
    return w


def config_json(bos_id: int, eos_ids: list[int]) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(out: Path) -> None:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    eos_ids = [ids[EOS], ids[EOT]]
    tok.save(str(out / "tokenizer.json"))
    _dump(out / "config.json", config_json(ids[BOS], eos_ids))
    _dump(out / "generation_config.json", {"bos_token_id": ids[BOS], "eos_token_id": eos_ids})
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    _dump(out / "special_tokens_map.json", specials)
    _dump(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "model_max_length": MAX_POS,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    save_file(build_weights(muted_ids(tok)), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    stamp = {"recipe": RECIPE_VERSION, "files": {f: _sha256(out / f) for f in OUTPUT_FILES}}
    _dump(out / STAMP_FILE, stamp)


def is_valid(out: Path) -> bool:
    """Present, written by this recipe version, and unmodified since."""
    try:
        stamp = json.loads((out / STAMP_FILE).read_text())
        return stamp["recipe"] == RECIPE_VERSION and all(_sha256(out / f) == stamp["files"][f] for f in OUTPUT_FILES)
    except (OSError, KeyError, ValueError):
        return False


def check_loads(out: Path) -> None:
    """Load with transformers (tokenizer, chat template, model) and run one greedy step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The cat sees a red ball")["input_ids"]
    assert ids[0] == tok.bos_token_id, ids
    assert tok.decode(ids, skip_special_tokens=True) == "The cat sees a red ball"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n"), chat
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        out_ids = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    print("check ok:", type(tok).__name__, "greedy:", repr(tok.decode(out_ids[0][len(ids) :])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / ".models" / "tiny-llama")
    ap.add_argument("--force", action="store_true", help="rebuild even if a valid model is present")
    ap.add_argument("--check", action="store_true", help="load the result with transformers and generate")
    args = ap.parse_args(argv)
    if not args.force and is_valid(args.out):
        print(f"tiny model present and valid: {args.out}")
    else:
        write_model(args.out)
        print(f"tiny model written: {args.out}")
    if args.check:
        check_loads(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
