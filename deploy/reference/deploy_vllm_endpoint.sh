# Model deployment script with detailed configuration

# Default values for arguments
DEFAULT_PORT=8000
DEFAULT_CORES="0-31"
DEFAULT_TP_DEGREE=32
DEFAULT_BS=4

# Help function
show_help() {
    echo "Usage: $0 [options]"
    echo "Options:"
    echo "  -p port        Port number for vLLM endpoint (default: $DEFAULT_PORT)"
    echo "  -c cores       Range of neuron cores (default: $DEFAULT_CORES)"
    echo "  -t tp_degree   Tensor parallel degree (default: $DEFAULT_TP_DEGREE)"
    echo "  -b bs          Batch size (default: $DEFAULT_BS)"
    echo "  -h             Show this help message"
}

# Parse single-letter arguments
while getopts "p:c:t:b:h" opt; do
    case $opt in
        p) port="$OPTARG" ;;
        c) cores="$OPTARG" ;;
        t) tp_degree="$OPTARG" ;;
        b) bs="$OPTARG" ;;
        h) show_help; exit 0 ;;
        ?) show_help; exit 1 ;;
    esac
done

# Set defaults if not provided
port=${port:-$DEFAULT_PORT}
cores=${cores:-$DEFAULT_CORES}
tp_degree=${tp_degree:-$DEFAULT_TP_DEGREE}
bs=${bs:-$DEFAULT_BS}

# Environment configurations
export NEURON_RT_INSPECT_ENABLE=0
export NEURON_RT_VIRTUAL_CORE_SIZE=2

# These should be the same paths used when compiling the model.
MODEL_PATH="/ubuntu/model_hf/Llama-3.3-70B-Instruct/"
COMPILED_MODEL_PATH="/ubuntu/traced_model/Llama-3.3-70B-Instruct/"

export VLLM_NEURON_FRAMEWORK="neuronx-distributed-inference"
export NEURON_COMPILED_ARTIFACTS=$COMPILED_MODEL_PATH
export NEURON_RT_VISIBLE_CORES=${cores}

VLLM_RPC_TIMEOUT=100000 python -m vllm.entrypoints.openai.api_server \
    --model $MODEL_PATH \
    --max-num-seqs ${bs} \
    --max-model-len 12800 \
    --tensor-parallel-size ${tp_degree} \
    --device neuron \
    --use-v2-block-manager \
    --override-neuron-config "{\"on_device_sampling_config\": {\"do_sample\": true, \"global_topk\": 64}}" \
    --port ${port} &
PID=$!
echo "vLLM server started with PID $PID"
