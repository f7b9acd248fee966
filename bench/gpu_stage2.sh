#!/usr/bin/env bash
# Stage 2 (AR prior, `base` 24L·1024·16h, vocab 8192, 1024 codes) on one GPU: the
# train step's MFU in a few variants (batch, remat, attention kernel) and the decode
# loop's speed against the HBM roofline (batch 1 and 64). One JSON per variant in $OUT.
#   OUT=/tmp/out [BUDGET=540] bash bench/gpu_stage2.sh [variant-name ...]   (default: all)
# Variants run in order of importance, each under its own time limit and all within
# BUDGET seconds (one device command may run 600 s), so a slow compile costs the
# variants after it, not the whole run.
set -uo pipefail
out=${OUT:-/tmp/bench_out}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 PYTHONUNBUFFERED=1
only=" $* "
budget=${BUDGET:-540}
started=$SECONDS
want() { [[ "$only" == "  " || "$only" == *" $1 "* ]]; }
# Keep the headline fields and any error; say when a variant hit its time limit.
filter() { grep -E "$1|Error|error|RESOURCE_EXHAUSTED" | tail -6; }
# limit SECONDS: the smaller of SECONDS and what is left of the budget (0: skip).
limit() {
  local left=$(( budget - (SECONDS - started) ))
  (( left < 45 )) && { echo 0; return; }
  echo $(( $1 < left ? $1 : left ))
}
status() { [[ $1 == 0 ]] || echo "   exit status $1$([[ $1 == 124 ]] && echo ' (time limit)')"; }
train() {
  local name=$1; shift
  want "$name" || return 0
  echo "== $name"
  local t; t=$(limit 150); (( t )) || { echo "   skipped: BUDGET=${budget}s spent"; return 0; }
  rm -f "$out/$name.json"
  timeout "$t" python bench/stage2_train_step.py --config=configs/vq3d_stage2.py:imagenet256_base \
    --steps=10 --out="$out/$name.json" "$@" 2>&1 | filter '"(step_time_s_median|mfu)"'
  status "${PIPESTATUS[0]}"
}
decode() {
  local name=$1; shift
  want "$name" || return 0
  echo "== $name"
  local t; t=$(limit 240); (( t )) || { echo "   skipped: BUDGET=${budget}s spent"; return 0; }
  rm -f "$out/$name.json"
  timeout "$t" python bench/stage2_decode.py --preset=base --out="$out/$name.json" "$@" 2>&1 \
    | filter "^batch "
  status "${PIPESTATUS[0]}"
}
# The preset trains with cuDNN flash attention and no remat. Decode: cache_segments=8
# is the config's default, but each segment compiles its own copy of the 24-layer loop
# body (~8x the compile), so it runs at batch 64 only, where the KV cache dominates the
# bytes; at batch 1 the params do (segments change the bytes by ~6 %).
train s2_train_b32_cudnn --batch=32
decode s2_decode_b64_seg8 --batches=64 --cache_segments=8 --repeats=2
decode s2_decode_seg1 --batches=1,64 --cache_segments=1
train s2_train_b64_cudnn --batch=64
train s2_train_b64_cudnn_remat --batch=64 --config.prior.remat=true
train s2_train_b16_xla --batch=16 --config.prior.attention_impl=
echo "== $(( SECONDS - started )) s"
python - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("s2_*.json")):
    r = json.loads(f.read_text())
    if r["benchmark"] == "stage2_train_step":
        print(f"{f.stem:28s} {r['step_time_s_median']*1e3:8.1f} ms  {r['tokens_per_s']:9.0f} tok/s"
              f"  MFU {r['mfu']:.3f} (vs 787: {r['mfu_vs_measured_matmul_peak'] or 0:.3f})"
              f"  model {r['model_tflops_per_step']:.1f} TF  xla "
              f"{r['xla_cost_analysis_tflops_per_step']:.1f} TF")
    else:
        for run in r["runs"]:
            print(f"{f.stem:28s} b{run['batch']:<3d} seg {run['cache_segments']:<2d}"
                  f" {run['step_ms']:7.3f} ms/step {run['tokens_per_s']:9.0f} tok/s"
                  f"  roofline {run['roofline_spec']['fraction_of_roofline']:.3f}"
                  f" (2900 GB/s: {run['roofline_measured']['fraction_of_roofline']:.3f})"
                  f"  cache copies {run['hlo_whole_cache_copies_per_step']}")
PY
