#!/bin/bash
# copy and paste me into a file called server.sh
# then run chmod +x server.sh

#!/bin/bash

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
      --compiled-model-path)
            COMPILED_MODEL_PATH="$2"
            shift 2
            ;;
      --send-ip)
            SEND_IP="$2"
            shift 2
            ;;
      --recv-ip)
            RECV_IP="$2"
            shift 2
            ;;
      *)
            echo "Unknown parameter: $1"
            echo "Usage: $0 --tp-degree <value> --batch-size <value> --model-path <path> \
                           --compiled-model-path <path> --send-ip <ip> --recv-ip <ip>"
            exit 1
            ;;
   esac
done

export NEURON_RT_ASYNC_SENDRECV_BOOTSTRAP_PORT=45645
export NEURON_RT_ASYNC_SENDRECV_EXPERIMENTAL_ENABLED=1
export NEURON_COMPILED_ARTIFACTS="$COMPILED_MODEL_PATH"
export NEURON_SEND_IP="$SEND_IP"
export NEURON_RECV_IP="$RECV_IP"
export NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=2

if [ "$SEND" = "1" ]; then
   PORT=8100
   if [ "$SINGLE_INSTANCE" = "1" ]; then
      export NEURON_RT_VISIBLE_CORES=0-31
   fi
   TRANSFER_CONFIG='{
            "kv_connector":"NeuronConnector",
            "kv_buffer_device":"cpu",
            "kv_role":"kv_producer",
            "kv_rank":0,
            "kv_parallel_size":2,
            "kv_buffer_size":2e11,
            "kv_ip":"'"$NEURON_SEND_IP"'",
            "neuron_core_offset": 0
      }'

else
   PORT=8200
   if [ "$SINGLE_INSTANCE" = "1" ]; then
      NC_OFFSET=32
      export NEURON_RT_VISIBLE_CORES=32-63
   else   
      NC_OFFSET=0
   fi
   TRANSFER_CONFIG='{
            "kv_connector":"NeuronConnector",
            "kv_buffer_device":"cpu",
            "kv_role":"kv_consumer",
            "kv_rank":1,
            "kv_parallel_size":2,
            "kv_buffer_size":2e11,
            "kv_ip":"'"$NEURON_SEND_IP"'",
            "neuron_core_offset": "'"$NC_OFFSET"'"
      }'
fi

python3 -m vllm.entrypoints.openai.api_server \
      --model "$MODEL_PATH" \
      --max-num-seqs "$BATCH_SIZE" \
      --max-model-len 8192 \
      --tensor-parallel-size "$TP_DEGREE" \
      --device neuron \
      --use-v2-block-manager \
      --override-neuron-config "{}" \
      --kv-transfer-config "$TRANSFER_CONFIG" \
      --port "$PORT"
