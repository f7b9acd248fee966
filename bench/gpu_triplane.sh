#!/usr/bin/env bash
# The tri-plane GAN head's render throughput on one GPU (bench/triplane_render.py): EG3D's
# neural render at 64² and 128² (rays/s, forward and forward+backward, against eg3d's
# 3.0 M / 0.87 M rays/s on an H100) and Mimic3D's direct 512² render (FPS), unchunked and
# chunked. One JSON per variant in $OUT.
#   OUT=/tmp/out bash bench/gpu_triplane.sh [variant-name ...]   (default: all)
# Each variant is its own process under its own time limit, so an out-of-memory or slow
# compile in one (the unchunked 512² render: 262,144 rays × 96 samples) costs only it;
# 4 × 140 s stays inside one 600 s device command.
set -uo pipefail
out=${OUT:-/tmp/bench_out}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 PYTHONUNBUFFERED=1
only=" $* "
run() {
  local name=$1; shift
  [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
  echo "== $name"
  rm -f "$out/$name.json"
  timeout 140 python bench/triplane_render.py --out="$out/$name.json" "$@" 2>&1 \
    | grep -E "^\{'case'|Error|error|RESOURCE_EXHAUSTED" | tail -4
  local rc=${PIPESTATUS[0]}
  [[ $rc == 0 ]] || echo "   exit status $rc$([[ $rc == 124 ]] && echo ' (time limit)')"
}
run tri_neural_b16 --resolutions=64,128 --batch=16 --skip-direct
run tri_neural_b32_64 --resolutions=64 --batch=32 --skip-direct
run tri_direct512 --resolutions= --direct-size=512
run tri_direct512_chunk65536 --resolutions= --direct-size=512 --chunk=65536
python - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("tri_*.json")):
    r = json.loads(f.read_text())
    for c in r["cases"]:
        fwd, bwd = c["forward"], c.get("forward_backward")
        line = f"{f.stem:26s} {c['case']:11s} b{c['batch']:<3d} fwd {fwd['rays_per_s']/1e6:7.2f} M rays/s"
        if bwd:
            line += (f" ({fwd['ratio_to_eg3d_h100']:.2f}x)  fwd+bwd {bwd['rays_per_s']/1e6:6.2f} M"
                     f" ({bwd['ratio_to_eg3d_h100']:.2f}x)")
        else:
            line += f"  {fwd['fps']:7.1f} FPS"
        print(line + f"  [{r['device']}]")
PY
