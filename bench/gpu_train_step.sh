#!/usr/bin/env bash
# The train-step benchmark at the imagenet256 preset size on one GPU, in a few
# variants (attention kernel, batch). Writes one JSON per variant to $OUT.
#   OUT=/tmp/out bash bench/gpu_train_step.sh [variant-name ...]   (default: all)
set -uo pipefail
out=${OUT:-/tmp/bench_out}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 PYTHONUNBUFFERED=1
only=" $* "
run() {
  local name=$1; shift
  [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
  echo "== $name"
  python bench/train_step.py --config="${config:-configs/vit_vqgan.py:imagenet256}" --steps=20 \
    --out="$out/$name.json" "$@" 2>&1 | grep -vE "^(I|W)[0-9]{4}" | tail -4
}
run train_step_b32_xla --batch=32
run train_step_b32_cudnn --batch=32 --config.model.attention_impl=cudnn
run train_step_b64_cudnn --batch=64 --config.model.attention_impl=cudnn
# VQ3D stage 1 at imagenet256 size: 128² renders of 256² × 32 planes, 48 + 48 samples.
config=configs/vq3d_stage1.py:imagenet256 run stage1_b32_cudnn --batch=32 \
  --config.model.attention_impl=cudnn
python - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem:32s} {r['step_time_s_median']*1e3:8.1f} ms  {r['images_per_s']:8.1f} img/s"
          f"  MFU {r['mfu'] or 0:.3f}  model {r['model_tflops_per_step']:.2f} TF"
          f"  xla {r['xla_cost_analysis_tflops_per_step']:.2f} TF")
PY
