#!/usr/bin/env bash
# One device call's worth of GPU work: a random full-size fp16 model written as a single-file
# checkpoint, a random rank-32 LoRA, the GPU check on it, then the benchmarks (default flags, the
# device patch, the fp32 text encoders against the default fp16 ones, images/s with shared UNet calls). Summaries go to $OUT
# (at most 8 files come back from the device tool); the GPU check's pictures stay in /tmp/gpu-check.
#
#   FAMILY=sd15|sdxl BIN=.gpubin/stipple scripts/gpu_session.sh
#
# PARTS=check or PARTS=bench runs half of it (each half fits the device tool's 10 minutes; the
# second call must follow the first while the machine is warm: it reuses the model in /tmp).
# PARTS=quick is the least worth a lease: the default and captured paths' check, the step, the
# post-swap case and the fused UNet's kernel profile.
#
# Before the call, on the machine that calls: the ONNX Runtime GPU parts in /tmp/parts (carried one
# per call, see gpu_env.sh), the diffusers wheels in .whl/ and a stripped release binary (BIN) carried
# with this call. The checkout must travel under 64 MiB: move tests/fixtures out of it for the calls.
# SDXL takes about 6 minutes for the export and the benches; its check runs fewer modes (MODES).
set -uo pipefail
OUT=${OUT:-/tmp/stipple-gpu}
mkdir -p "$OUT"
FAMILY=${FAMILY:-sd15}
BIN=${BIN:-target/release/stipple}
chmod +x "$BIN"
. "$(dirname "$0")/gpu_env.sh"
export PYTHONUNBUFFERED=1
folder=/tmp/$FAMILY
ckpt=/tmp/$FAMILY.safetensors
lora=/tmp/loras/synth32.safetensors
t=$(date +%s)
if [ ! -f "$ckpt" ]; then
  python3 scripts/export_model.py --random "$FAMILY" --dtype fp16 --device cuda --out "$folder" \
    > "$OUT/export.log" 2>&1 || { tail -20 "$OUT/export.log"; exit 1; }
  python3 scripts/folder_to_checkpoint.py "$folder" "$ckpt" >> "$OUT/export.log" 2>&1 \
    || { tail -20 "$OUT/export.log"; exit 1; }
fi
mkdir -p /tmp/loras
if [ ! -f "$lora" ]; then
  # The text-encoder part uses SD1's key prefix; SDXL's LoRA covers the UNet only.
  te=$([ "$FAMILY" = sd15 ] && echo --te)
  python3 scripts/synth_lora.py "$folder" "$lora" --rank 32 $te >> "$OUT/export.log" 2>&1
fi
echo "model and LoRA ready: $(( $(date +%s) - t )) s" | tee "$OUT/session.txt"
if [ "$FAMILY" = sdxl ]; then
  export MODES=${MODES:-"default|
patch-host|--patch-on host
vae-fused|--vae-precision fp16 --vae-graph fused"}
  export STEPS=${STEPS:-8}
fi
PARTS=${PARTS:-check,bench}
if [ "$PARTS" = quick ]; then
  # A short lease (about 6 minutes after the ONNX Runtime parts): the GPU check of the default and
  # captured paths and the fp32 text encoders against the default's fp16 ones, the step and load figures, the post-swap case, and
  # where the fused UNet's GPU time goes (scripts/unet_profile.py, the shipped graph against
  # shape_transposes.py's layout).
  MODES="default|
cudagraph|--cuda-graph --static-shapes
te-fp32|--te-precision fp32" OUT=/tmp/gpu-check MODEL=$ckpt LORA_FROM=$folder BIN=$BIN \
    scripts/gpu_check.sh > "$OUT/gpu_check.txt" 2>&1
  echo "gpu_check exit $? after $(( $(date +%s) - t )) s" | tee -a "$OUT/session.txt"
  "$BIN" bench --device cuda:0 --model "$ckpt" --repeats 3 > "$OUT/bench-default.txt" 2>&1
  attn=/tmp/loras/attn32.safetensors
  [ -f "$attn" ] || python3 scripts/synth_lora.py "$folder" "$attn" --rank 32 --layers attn >> "$OUT/export.log" 2>&1
  STIPPLE_PROFILE=1 "$BIN" bench --device cuda:0 --model "$ckpt" --lora "$attn" --repeats 1 \
    > "$OUT/bench-post-swap.txt" 2>&1
  template=templates/$([ "$FAMILY" = sdxl ] && echo sdxl || echo sd15)-fp16
  PYTHONPATH=/tmp/ort:${PYTHONPATH:-} timeout 180 python3 scripts/unet_profile.py "$template" \
    --graphs cuda,cuda-layout --top 10 > "$OUT/unet-profile.txt" 2>&1
  echo "done after $(( $(date +%s) - t )) s" | tee -a "$OUT/session.txt"
  exit 0
fi
if [[ $PARTS == *check* ]]; then
  OUT=/tmp/gpu-check MODEL=$ckpt LORA_FROM=$folder BIN=$BIN scripts/gpu_check.sh > "$OUT/gpu_check.txt" 2>&1
  echo "gpu_check exit $? after $(( $(date +%s) - t )) s" | tee -a "$OUT/session.txt"
fi
[[ $PARTS == *bench* ]] || exit 0
bench() {  # bench NAME FLAGS...
  local name=$1; shift
  "$BIN" bench --device cuda:0 --model "$ckpt" "$@" > "$OUT/bench-$name.txt" 2>&1 \
    || echo "bench $name failed: $?" >> "$OUT/session.txt"
}
if [ "$FAMILY" = sd15 ]; then
  bench default --lora "$lora" --live
  bench host --lora "$lora" --patch-on host --live --repeats 2
  bench device-uncaptured --lora "$lora" --patch-on device --live --cuda-patch-graph=false --repeats 2
  STIPPLE_PATCH_F16=1 bench device-f16 --lora "$lora" --live --repeats 2
  bench te-fp32 --te-precision fp32 --vae-graph plain --repeats 3
  bench throughput --throughput 16 --steps 20 --unet-batch 8 --repeats 1
  # The post-swap slowdown (README, Performance): an adapter with no text-encoder layers swapped in
  # by the device patch, one repeat, with a sampling profile of each phase's UNet steps on stderr.
  attn=/tmp/loras/attn32.safetensors
  [ -f "$attn" ] || python3 scripts/synth_lora.py "$folder" "$attn" --rank 32 --layers attn >> "$OUT/export.log" 2>&1
  STIPPLE_PROFILE=1 bench post-swap --lora "$attn" --repeats 1
  # LoCon on every Linear and conv: the heaviest per-step re-run (issue target 4 ms).
  all=/tmp/loras/all32.safetensors
  [ -f "$all" ] || python3 scripts/synth_lora.py "$folder" "$all" --rank 32 --layers all >> "$OUT/export.log" 2>&1
  bench locon-all --lora "$all" --live --repeats 2
else
  bench default --lora "$lora" --vae-precision fp16 --repeats 2
  # The template's fused UNet (auto on CUDA) against its plain graph, in the same lease.
  bench plain-unet --graph plain --vae-precision fp16 --repeats 2
  bench host --lora "$lora" --patch-on host --vae-precision fp16 --vae-graph plain --te-precision fp16 --repeats 2
fi
# PyTorch's figures for the same architecture in the same lease (the anchors next to stipple's).
python3 scripts/torch_anchor.py --family "$FAMILY" --batches 1,4,8 > "$OUT/torch-anchor.txt" 2>&1 \
  || echo "torch_anchor failed: $?" >> "$OUT/session.txt"
echo "done after $(( $(date +%s) - t )) s" | tee -a "$OUT/session.txt"
