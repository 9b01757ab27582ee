#!/usr/bin/env bash
# Per-image time of one `stipple batch` process vs one `stipple generate` process per image.
#
#   scripts/bench_batch.sh [IMAGES] [STEPS]        defaults: 16 images, 4 steps
#
# Environment: STIPPLE (binary; default target/release/stipple, built if missing), MODEL (model
# folder; default the bundled tiny model), DEVICE (default cpu), RUNS (repetitions; default 3).
# Uses hyperfine when it is installed, else `date`. Both sides make the same images (same prompt,
# seeds 1..IMAGES) into fresh folders, so the batch never skips anything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
images=${1:-16}
steps=${2:-4}
runs=${RUNS:-3}
device=${DEVICE:-cpu}
bin=${STIPPLE:-$root/target/release/stipple}
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --bin stipple)
fi
model_flag=()
[ -n "${MODEL:-}" ] && model_flag=(--model "$MODEL")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 "$images"); do
  printf '{"prompt": "a lighthouse in a storm", "steps": %d, "seed": %d}\n' "$steps" "$i"
done >"$tmp/jobs.jsonl"

batch_cmd="'$bin' batch '$tmp/jobs.jsonl' --out '$tmp/b' --device $device ${model_flag[*]:+${model_flag[*]}} >/dev/null 2>&1"
gen_cmd="for i in \$(seq 1 $images); do '$bin' generate --prompt 'a lighthouse in a storm' --steps $steps --seed \$i --out '$tmp/g' --device $device --no-preview ${model_flag[*]:+${model_flag[*]}} >/dev/null 2>&1; done"
clean="rm -rf '$tmp/b' '$tmp/g'"

echo "bench_batch: $images images, $steps steps, device $device, $runs runs, binary $bin" >&2
if command -v hyperfine >/dev/null 2>&1; then
  hyperfine --runs "$runs" --prepare "$clean" --export-json "$tmp/h.json" \
    -n batch "$batch_cmd" -n generate-per-image "$gen_cmd" >&2
  python3 - "$tmp/h.json" "$images" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
n = int(sys.argv[2])
t = {r["command"]: r["mean"] for r in res}
for name, mean in t.items():
    print(f"{name:20s} {mean:8.3f} s total  {mean / n:7.3f} s per image")
print(f"speed-up {t['generate-per-image'] / t['batch']:.2f}x")
PY
else
  measure() {
    local total=0 start end
    for _ in $(seq 1 "$runs"); do
      eval "$clean"
      start=$(date +%s.%N)
      bash -c "$1"
      end=$(date +%s.%N)
      total=$(awk -v t="$total" -v a="$start" -v b="$end" 'BEGIN { print t + b - a }')
    done
    awk -v t="$total" -v r="$runs" 'BEGIN { print t / r }'
  }
  b=$(measure "$batch_cmd")
  g=$(measure "$gen_cmd")
  awk -v b="$b" -v g="$g" -v n="$images" 'BEGIN {
    printf "%-20s %8.3f s total  %7.3f s per image\n", "batch", b, b / n
    printf "%-20s %8.3f s total  %7.3f s per image\n", "generate-per-image", g, g / n
    printf "speed-up %.2fx\n", g / b
  }'
fi
