#!/usr/bin/env bash
# One machine, all its local devices (CPU, one or more GPUs, or a TPU VM host).
#   launch/local.sh configs/vq3d_stage1.py:tiny workdirs/tiny [--config.key=value ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG:PRESET WORKDIR [flags...]}
workdir=${2:?usage: launch/local.sh CONFIG:PRESET WORKDIR [flags...]}
shift 2
cd "$(dirname "$0")/.."
exec python -m vq3d_jax.main --config="$config" --workdir="$workdir" "$@"
