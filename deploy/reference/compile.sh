#!/bin/bash
# copy and paste me into a file called compile.sh
# then run chmod +x compile.sh

# Parse command line arguments
while [[ $# -gt 0 ]]; do
   case $1 in
      --tp-degree)
            TP_DEGREE="$2"
            shift 2
            ;;
      --batch-size)
            BATCH_SIZE="$2"
            shift 2
            ;;
      --model-path)
            MODEL_PATH="$2"
            shift 2
            ;;
      *)
            echo "Unknown parameter: $1"
            echo "Usage: $0 --tp-degree <value> --batch-size <value> --model-path <path>"
            exit 1
            ;;
   esac
done

export COMPILED_MODEL_PATH="di_traced_model_tp${TP_DEGREE}_b${BATCH_SIZE}/"

inference_demo \
   --model-type llama \
   --task-type causal-lm \
   run \
   --model-path $MODEL_PATH \
   --compiled-model-path $COMPILED_MODEL_PATH \
   --torch-dtype bfloat16 \
   --tp-degree $TP_DEGREE \
   --batch-size $BATCH_SIZE \
   --ctx-batch-size 1 \
   --tkg-batch-size $BATCH_SIZE \
   --is-continuous-batching \
   --max-context-length 8192 \
   --seq-len 8192 \
   --on-device-sampling \
   --fused-qkv \
   --global-topk 256 --dynamic \
   --top-k 50 --top-p 0.9 --temperature 0.7 \
   --do-sample \
   --sequence-parallel-enabled \
   --qkv-kernel-enabled \
   --attn-kernel-enabled \
   --mlp-kernel-enabled \
   --cc-pipeline-tiling-factor 1 \
   --pad-token-id 2 \
   --logical-neuron-cores 2 \
   --context-encoding-buckets 256 512 1024 2048 4096 8192 \
   --token-generation-buckets 512 1024 2048 4096 8192 \
   --apply-seq-ids-mask \
   --enable-bucketing \
   --prompt "test prompt" \
   --save-sharded-checkpoint \
   --attn-block-tkg-nki-kernel-enabled \
   --attn-block-tkg-nki-kernel-cache-update \
   --k-cache-transposed \
   --async-mode \
   --compile-only
