"""Write a rank-8 LoRA adapter for the tiny Llama (scripts/make_tiny_model.py) in PEFT's
layout, for the LoRA tests of the real tier: q_proj and v_proj of every layer, small random
weights (seeded), so that vLLM loads it and serves it as a model of its own.

    python scripts/make_tiny_lora.py [MODEL_DIR] [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 8


def make(model_dir: Path, out: Path) -> Path:
    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads, kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    outs = {"q_proj": heads * head_dim, "v_proj": kv_heads * head_dim}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name, width in outs.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, hidden, generator=gen) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(width, RANK, generator=gen) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": RANK,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(outs),
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
    return out


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else root / ".models" / "tiny-llama"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else root / ".models" / "tiny-lora"
    print(make(model, target))
