#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command on every worker. Each worker is one
# JAX process; jax.distributed.initialize() (--distributed) needs no arguments on
# TPU. The workdir must be shared storage (a gs:// bucket) so that Orbax writes
# one checkpoint collectively.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/vq3d_stage1.py:imagenet256 gs://BUCKET/run1 \
#       [--config.key=value ...]
# Set REPO_DIR to where the repository is checked out on the workers (default
# ~/vq3d_jax); install first with: pip install -r requirements.txt "jax[tpu]".
set -euo pipefail
tpu=${1:?usage: tpu_pod.sh TPU_NAME ZONE CONFIG:PRESET WORKDIR [flags...]}
zone=${2:?}
config=${3:?}
workdir=${4:?}
shift 4
repo=${REPO_DIR:-~/vq3d_jax}
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo && python -m vq3d_jax.main --distributed \
    --config=$config --workdir=$workdir $extra"
