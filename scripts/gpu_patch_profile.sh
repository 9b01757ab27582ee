#!/usr/bin/env bash
# Where a device patch's time goes, on the GPU machine: a random full-size SD1.5 checkpoint and a random
# rank-32 LoRA (scripts/gpu_session.sh makes them), `stipple bench --live` with the patch programs
# written out (STIPPLE_DUMP_PATCH), once per program form (the f32 sum, the default; the f16 Gemm path),
# then scripts/patch_profile.py on each: time per run launch by launch and as a CUDA graph, and the GPU
# kernels by name. Summaries go to $OUT: profile-<form>.txt for the re-run programs (*-rerun/, what a
# strength change runs), commit-<form>.txt for the commit-only ones (*-commit/).
#
#   BIN=.gpubin/stipple scripts/gpu_patch_profile.sh
set -uo pipefail
OUT=${OUT:-/tmp/stipple-gpu}
mkdir -p "$OUT"
BIN=${BIN:-target/release/stipple}
PARTS=none FAMILY=sd15 BIN=$BIN scripts/gpu_session.sh
. "$(dirname "$0")/gpu_env.sh"
for v in ${FORMS:-f32 f16}; do
  rm -rf "/tmp/dump-$v"
  f16=$([ "$v" = f16 ] && echo 1 || echo 0)
  STIPPLE_PATCH_F16=$f16 STIPPLE_DUMP_PATCH=/tmp/dump-$v "$BIN" bench --device cuda:0 \
    --model /tmp/sd15.safetensors --lora /tmp/loras/synth32.safetensors --live --repeats 1 \
    > "$OUT/live-$v.txt" 2>&1 || echo "bench $v failed: $?" >> "$OUT/live-$v.txt"
  PYTHONPATH=/tmp/ort:${PYTHONPATH:-} python3 scripts/patch_profile.py /tmp/dump-$v/*-rerun/ \
    > "$OUT/profile-$v.txt" 2>&1 || echo "profile $v failed: $?" >> "$OUT/profile-$v.txt"
  PYTHONPATH=/tmp/ort:${PYTHONPATH:-} python3 scripts/patch_profile.py /tmp/dump-$v/*-commit/ \
    > "$OUT/commit-$v.txt" 2>&1 || echo "profile $v failed: $?" >> "$OUT/commit-$v.txt"
done
