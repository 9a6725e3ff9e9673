#!/usr/bin/env bash
# Compile (trace) a Llama model for Neuron with NxD Inference's inference_demo.
#
#   deploy/compile.sh --tp-degree 32 --batch-size 4 --model-path /models/Llama-3.3-70B-Instruct
#   deploy/compile.sh --non-di --tp-degree 32 --batch-size 4 --model-path ...
#   deploy/compile.sh --mode dp --tp-degree 32 --batch-size 4 --model-path ...
#
# Modes:
#   di (default)  the DI tutorial's compile.sh flags, including --apply-seq-ids-mask,
#                 which DI needs so a request only updates its own KV-cache rows.
#                 Output: di_traced_model_tp<TP>_b<BS>/ (as the tutorial names it).
#   non-di        the same continuous-batching build without --apply-seq-ids-mask,
#                 for plain replicas. Output: traced_model_tp<TP>_b<BS>/.
#   dp            the data-parallel tutorial's compile_model.sh flags and env.
#
# The compiled path must match the topology's models[].compiled_path
# (NEURON_COMPILED_ARTIFACTS at serve time) and the TP/batch size of its pool.
# --dry-run prints the command instead of running it.
set -euo pipefail

usage() {
    echo "Usage: $0 --tp-degree N --batch-size N --model-path PATH [--compiled-model-path PATH]"
    echo "          [--mode di|non-di|dp | --non-di] [--seq-len N] [--lnc N] [--dry-run]"
}

MODE=di SEQ_LEN=8192 LNC=2 DRY_RUN=0
TP_DEGREE="" BATCH_SIZE="" MODEL_PATH="" COMPILED_MODEL_PATH=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --tp-degree) TP_DEGREE="$2"; shift 2 ;;
        --batch-size) BATCH_SIZE="$2"; shift 2 ;;
        --model-path) MODEL_PATH="$2"; shift 2 ;;
        --compiled-model-path) COMPILED_MODEL_PATH="$2"; shift 2 ;;
        --mode) MODE="$2"; shift 2 ;;
        --non-di) MODE=non-di; shift ;;
        --seq-len) SEQ_LEN="$2"; shift 2 ;;
        --lnc) LNC="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "Unknown parameter: $1" >&2; usage >&2; exit 1 ;;
    esac
done
if [[ -z "$TP_DEGREE" || -z "$BATCH_SIZE" || -z "$MODEL_PATH" ]]; then
    usage >&2
    exit 1
fi

# Bucket ladders up to SEQ_LEN, as in the tutorial (256..8192 / 512..8192).
buckets() {
    local b=$1 out=()
    while (( b < SEQ_LEN )); do out+=("$b"); b=$(( b * 2 )); done
    echo "${out[@]}" "$SEQ_LEN"
}

case $MODE in
    di|non-di)
        prefix=$([[ $MODE == di ]] && echo di_traced_model || echo traced_model)
        COMPILED_MODEL_PATH=${COMPILED_MODEL_PATH:-${prefix}_tp${TP_DEGREE}_b${BATCH_SIZE}/}
        # shellcheck disable=SC2046  # bucket lists split into words on purpose
        cmd=(inference_demo --model-type llama --task-type causal-lm run
            --model-path "$MODEL_PATH" --compiled-model-path "$COMPILED_MODEL_PATH"
            --torch-dtype bfloat16 --tp-degree "$TP_DEGREE" --batch-size "$BATCH_SIZE"
            --ctx-batch-size 1 --tkg-batch-size "$BATCH_SIZE" --is-continuous-batching
            --max-context-length "$SEQ_LEN" --seq-len "$SEQ_LEN"
            --on-device-sampling --fused-qkv
            --global-topk 256 --dynamic
            --top-k 50 --top-p 0.9 --temperature 0.7
            --do-sample --sequence-parallel-enabled
            --qkv-kernel-enabled --attn-kernel-enabled --mlp-kernel-enabled
            --cc-pipeline-tiling-factor 1 --pad-token-id 2 --logical-neuron-cores "$LNC"
            --context-encoding-buckets $(buckets 256)
            --token-generation-buckets $(buckets 512))
        [[ $MODE == di ]] && cmd+=(--apply-seq-ids-mask)
        cmd+=(--enable-bucketing --prompt "test prompt" --save-sharded-checkpoint
            --attn-block-tkg-nki-kernel-enabled --attn-block-tkg-nki-kernel-cache-update
            --k-cache-transposed --async-mode --compile-only)
        ;;
    dp)
        COMPILED_MODEL_PATH=${COMPILED_MODEL_PATH:-traced_model_tp${TP_DEGREE}_b${BATCH_SIZE}/}
        export NEURON_RT_VIRTUAL_CORE_SIZE=$LNC
        export NEURON_RT_NUM_CORES=$(( 128 / LNC ))
        export NEURON_RT_EXEC_TIMEOUT=600
        export XLA_DENSE_GATHER_FACTOR=0
        export NEURON_RT_INSPECT_ENABLE=0
        cmd=(inference_demo --model-type llama --task-type causal-lm run
            --model-path "$MODEL_PATH" --compiled-model-path "$COMPILED_MODEL_PATH"
            --torch-dtype bfloat16 --start_rank_id 0 --local_ranks_size "$TP_DEGREE"
            --tp-degree "$TP_DEGREE" --batch-size "$BATCH_SIZE"
            --max-context-length "$SEQ_LEN" --seq-len "$SEQ_LEN"
            --on-device-sampling --top-k 1 --do-sample --fused-qkv
            --qkv-kernel-enabled --attn-kernel-enabled --mlp-kernel-enabled
            --pad-token-id 2 --compile-only --prompt "What is annapurna labs?")
        ;;
    *) echo "Unknown mode: $MODE (di, non-di or dp)" >&2; exit 1 ;;
esac

export COMPILED_MODEL_PATH
if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
echo "compiling ($MODE) into $COMPILED_MODEL_PATH"
exec "${cmd[@]}"
