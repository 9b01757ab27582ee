#!/usr/bin/env bash
# Runs stipple on the GPU machine (a GPU box with ONNX Runtime GPU and PyTorch): a full-size SD1.5-architecture model
# (FAMILY=sdxl: SDXL, 1024x1024) with random fp16 weights (exported there), a random rank-32 LoRA, then doctor, generate and bench on
# cuda:0, with peak device memory and ONNX Runtime's per-operator profile. Results go to $OUT.
# OPTIMIZE=1 (the default for sd15) also writes ORT's SD-fused graph (--optimize cuda) and runs
# generate and bench on both UNet graphs, comparing their images; STAGE=export stops after the export.
# BAKED=1 adds weights baked into new sessions on a swap (--resident-weights false) next to the
# resident default, with the picture compared.
#
# Expects: ONNX Runtime GPU parts in /tmp/parts (or unpacked in /tmp/ort), the diffusers wheels in
# .whl/, and a release build at target/release/stipple (carried). Needs the machine's PyTorch.
set -euo pipefail
OUT=${OUT:-/tmp/stipple-gpu}
mkdir -p "$OUT"
. "$(dirname "$0")/gpu_env.sh"
FAMILY=${FAMILY:-sd15}
MODEL=${MODEL:-/tmp/$FAMILY}
if [ ! -f "$MODEL/model_index.json" ]; then
  t=$(date +%s)
  python3 scripts/export_model.py --random "$FAMILY" --dtype fp16 --device cuda --out "$MODEL" > "$OUT/export.log" 2>&1
  echo "export: $(( $(date +%s) - t )) s" | tee -a "$OUT/summary.txt"
fi
OPTIMIZE=${OPTIMIZE:-$([ "$FAMILY" = sd15 ] && echo 1 || echo 0)}
if [ "$OPTIMIZE" = 1 ] && [ ! -f "$MODEL/unet/model.cuda.onnx" ]; then
  t=$(date +%s)
  # ORT's optimizer from the GPU wheel (the machine's own onnxruntime is another version).
  PYTHONPATH=/tmp/ort:${PYTHONPATH:-} python3 scripts/export_model.py --optimize cuda --model "$MODEL" \
    > "$OUT/optimize.log" 2>&1 || { tail -30 "$OUT/optimize.log"; exit 1; }
  tail -1 "$OUT/optimize.log"
  echo "optimize --cuda: $(( $(date +%s) - t )) s" | tee -a "$OUT/summary.txt"
fi
[ "${STAGE:-all}" = export ] && exit 0
if [ -z "${GRAPHS:-}" ]; then
  GRAPHS=plain
  [ -f "$MODEL/unet/model.cuda.onnx" ] && GRAPHS="cuda plain"
fi
G0=${GRAPHS%% *}
compare() {  # compare DIR_A DIR_B LABEL: the same seed through two paths, fp16 kernels differ
  python3 - "$1"/*.png "$2"/*.png "$3" <<'PY' | tee -a "$OUT/summary.txt"
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sys.argv[1:3])
print(f"{sys.argv[3]}: mean abs diff {np.abs(a - b).mean():.3f}/255, max {np.abs(a - b).max():.0f}/255")
PY
}
mkdir -p /tmp/loras
[ -f /tmp/loras/synth32.safetensors ] || python3 scripts/synth_lora.py "$MODEL" /tmp/loras/synth32.safetensors --rank 32 --te
BIN=${BIN:-target/release/stipple}
chmod +x "$BIN"
"$BIN" doctor --model "$MODEL" | tee "$OUT/doctor.txt"
# Peak device memory while the commands below run.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/gpumem.txt" 2>/dev/null &
smi=$!
for G in $GRAPHS; do
  "$BIN" generate --device cuda:0 --graph $G --model "$MODEL" --prompt "a red fox <lora:synth32:0.8>" \
    --lora-dir /tmp/loras --steps 20 --seed 1 --out "$OUT/img-$G" --no-preview > "$OUT/generate-$G.jsonl" \
    || echo "generate ($G) failed: $?"
  tail -2 "$OUT/generate-$G.jsonl"
  "$BIN" bench --device cuda:0 --graph $G --model "$MODEL" --lora /tmp/loras/synth32.safetensors \
    --repeats ${REPEATS:-5} > "$OUT/bench-$G.txt" || echo "bench ($G) failed: $?"
  cat "$OUT/bench-$G.txt"
  if [ "${STATIC:-0}" = 1 ]; then
    "$BIN" bench --device cuda:0 --graph $G --model "$MODEL" --lora /tmp/loras/synth32.safetensors \
      --repeats ${REPEATS:-5} --static-shapes > "$OUT/bench-$G-static.txt" || echo "static bench failed: $?"
    cat "$OUT/bench-$G-static.txt"
  fi
done
if [ -d "$OUT/img-cuda" ] && [ -d "$OUT/img-plain" ]; then
  compare "$OUT/img-cuda" "$OUT/img-plain" "fused vs plain image"
fi
for L in ${OPT_LEVELS:-}; do  # ONNX Runtime graph optimisation levels to compare (session time, step)
  STIPPLE_ORT_OPT_LEVEL=$L "$BIN" bench --device cuda:0 --graph $G0 --model "$MODEL" \
    --lora /tmp/loras/synth32.safetensors --repeats ${REPEATS:-5} > "$OUT/bench-$G0-opt$L.txt" || echo "bench opt $L failed"
  cat "$OUT/bench-$G0-opt$L.txt"
done
if [ "${BAKED:-0}" = 1 ]; then  # weights baked into new sessions on a swap, next to the resident default
  "$BIN" generate --device cuda:0 --graph $G0 --resident-weights false --model "$MODEL" \
    --prompt "a red fox <lora:synth32:0.8>" --lora-dir /tmp/loras --steps 20 --seed 1 --out "$OUT/img-baked" \
    --no-preview > "$OUT/generate-baked.jsonl" || echo "generate (baked) failed: $?"
  [ -d "$OUT/img-baked" ] && [ -d "$OUT/img-$G0" ] && compare "$OUT/img-baked" "$OUT/img-$G0" "baked vs resident weights"
  "$BIN" bench --device cuda:0 --graph $G0 --resident-weights false --model "$MODEL" \
    --lora /tmp/loras/synth32.safetensors --repeats ${REPEATS:-5} > "$OUT/bench-$G0-baked.txt" || echo "bench (baked) failed"
  cat "$OUT/bench-$G0-baked.txt"
fi
if [ "${CUDA_GRAPH:-0}" = 1 ]; then  # the UNet captured as a CUDA graph, against the same graph without
  "$BIN" generate --device cuda:0 --graph $G0 --cuda-graph --static-shapes --model "$MODEL" \
    --prompt "a red fox <lora:synth32:0.8>" --lora-dir /tmp/loras --steps 20 --seed 1 --out "$OUT/img-cudagraph" \
    --no-preview > "$OUT/generate-cudagraph.jsonl" || echo "generate (cuda graph) failed: $?"
  tail -1 "$OUT/generate-cudagraph.jsonl"
  [ -d "$OUT/img-cudagraph" ] && [ -d "$OUT/img-$G0" ] && compare "$OUT/img-cudagraph" "$OUT/img-$G0" "CUDA graph vs not"
  "$BIN" bench --device cuda:0 --graph $G0 --cuda-graph --static-shapes --model "$MODEL" \
    --lora /tmp/loras/synth32.safetensors --repeats ${REPEATS:-5} > "$OUT/bench-$G0-cudagraph.txt" || echo "bench (cuda graph) failed"
  cat "$OUT/bench-$G0-cudagraph.txt"
fi
kill $smi 2>/dev/null || true
echo "peak device memory: $(sort -n "$OUT/gpumem.txt" | tail -1) MiB" | tee -a "$OUT/summary.txt"
if [ "${PROFILE:-1}" = 1 ]; then
  rm -f /tmp/prof-*
  STIPPLE_ORT_PROFILE=/tmp/prof "$BIN" bench --device cuda:0 --graph $G0 --model "$MODEL" --repeats 1 > /dev/null
  python3 - /tmp/prof-unet*.json > "$OUT/profile.txt" <<'PY'
import json, sys, collections
events = json.load(open(sys.argv[1]))
by_op, runs = collections.defaultdict(lambda: [0, 0]), 0
for e in events:
    if e.get("cat") == "Session" and e.get("name") == "model_run":
        runs += 1
    if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
        continue
    op = e.get("args", {}).get("op_name", "?")
    by_op[op][0] += e.get("dur", 0)
    by_op[op][1] += 1
total = sum(v[0] for v in by_op.values())
print(f"UNet runs profiled: {runs}; kernel time per run: {total / max(runs, 1) / 1000:.2f} ms")
for op, (dur, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:25]:
    print(f"{op:<28} {dur / max(runs, 1) / 1000:8.3f} ms/run  {100 * dur / max(total, 1):5.1f}%  {n // max(runs, 1):5d} nodes/run")
PY
  cat "$OUT/profile.txt"
fi
