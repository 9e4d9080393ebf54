#!/bin/bash
# Training on a Cloud TPU pod slice: the same command on every worker (host) of the slice.
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh configs/transformer_lm.yaml trainer.max_steps=20000
#
# Each worker runs one process that drives its local TPU chips. `initialize_distributed()`
# recognizes a TPU VM (a Google TPU PCI device) and calls `jax.distributed.initialize()`, which
# reads the slice's workers and this worker's index from the TPU metadata server.
# Every worker must run the same code and config (here the Docker image, built from one commit;
# see docker/README.md), and the run directory must be storage all workers share (a GCS bucket
# mounted with gcsfuse, or Filestore): checkpoints are written by all workers, logs by worker 0.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
IMAGE=${IMAGE:-paxtrain:tpu}
SHARED=${SHARED:-/mnt/shared}
RUN_DIR=${RUN_DIR:-$SHARED/runs/$TPU_NAME}
CONFIG=${1:-configs/transformer_lm.yaml}
shift || true

# The TPU chips need a privileged container; the workers reach each other on the host network.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "
    docker run --rm --privileged --net=host -v $SHARED:$SHARED \
        $IMAGE fit $CONFIG run_dir=$RUN_DIR $*
"
