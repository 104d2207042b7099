#!/usr/bin/env bash
# Run the official TensorFlow Serving image over the Pusher's base path (same flags as
# docker-compose.yml). Usage: serving/run_tf_serving.sh [SERVING_ROOT]   (default tfx_out/serving)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVING_ROOT="$(cd "${1:-$HERE/../tfx_out/serving}" && pwd)"
IMAGE="tensorflow/serving:2.19.1"   # = tensorflow-serving-api pin in requirements/constraints.txt

exec docker run --rm --name cxr-tfp-serving \
  -p 8500:8500 -p 8501:8501 \
  -v "$SERVING_ROOT:/models:ro" \
  -v "$HERE/models.config:/config/models.config:ro" \
  -v "$HERE/batching_parameters.txt:/config/batching_parameters.txt:ro" \
  -v "$HERE/monitoring.config:/config/monitoring.config:ro" \
  "$IMAGE" \
  --model_config_file=/config/models.config \
  --model_config_file_poll_wait_seconds=60 \
  --allow_version_labels_for_unavailable_models=true \
  --enable_batching=true \
  --batching_parameters_file=/config/batching_parameters.txt \
  --monitoring_config_file=/config/monitoring.config \
  --enable_model_warmup=true
