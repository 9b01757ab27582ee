#!/usr/bin/env bash
# Several GPUs, measured (run it on a box with two or more GPUs, after scripts/gpu_env.sh's setup):
# a job file of N SD1.5 512² jobs (20 steps, one image each, seeds 1..N) run with --device cuda:0 and
# with --device cuda:0,cuda:1 (DEVICES), each into a fresh folder, while nvidia-smi samples every
# GPU's utilisation and memory; then a kill -9 of a two-GPU run once RESULTS results are in, and a
# rerun into the same folder. Prints images/s for each run and the scaling, whether every job was
# done exactly once (result lines, distinct job hashes, PNG files), per-GPU peak memory and mean
# utilisation, and whether the killed run's rerun completed the set. Summaries go to $OUT.
#
#   BIN=.gpubin/stipple MODEL=/tmp/sd15.safetensors scripts/multi_gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/multi-gpu}
BIN=${BIN:-target/release/stipple}
MODEL=${MODEL:-/tmp/sd15.safetensors}
N=${N:-64}
DEVICES=${DEVICES:-cuda:0,cuda:1}
RESULTS=${RESULTS:-12}
SIZE=${SIZE:-512}
STEPS=${STEPS:-20}
mkdir -p "$OUT"
# ENV=none: no GPU setup (a dry run of the script itself on the CPU, DEVICES=cpu,cpu and ONE=cpu).
[ "${ENV:-gpu}" = none ] || . "$(dirname "$0")/gpu_env.sh"
[ -e "$MODEL" ] || python3 scripts/random_checkpoint.py sd15 "$MODEL" --device cuda > "$OUT/export.log" 2>&1 \
  || { tail -5 "$OUT/export.log"; exit 1; }
python3 - "$N" "$SIZE" "$STEPS" > "$OUT/jobs.jsonl" <<'PY'
import json, sys
n, size, steps = (int(x) for x in sys.argv[1:4])
for i in range(1, n + 1):
    print(json.dumps({"prompt": f"a lighthouse on a cliff at dusk, study {i}", "steps": steps,
                      "width": size, "height": size, "seed": i}))
PY

# One run: its result lines, stderr and nvidia-smi samples under $OUT/<tag>.*; its wall seconds on stdout.
run() {
  local tag=$1 devices=$2
  rm -rf "$OUT/$tag"
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$OUT/$tag.smi" 2>/dev/null &
  local smi=$!
  local t0; t0=$(date +%s.%N)
  "$BIN" batch "$OUT/jobs.jsonl" --model "$MODEL" --device "$devices" --out "$OUT/$tag" \
    > "$OUT/$tag.jsonl" 2> "$OUT/$tag.err"
  local rc=$?
  local t1; t1=$(date +%s.%N)
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  echo "$rc $(python3 -c "print(f'{$t1 - $t0:.2f}')")"
}

summary() {
  python3 - "$OUT" "$N" "$@" <<'PY'
import csv, json, os, sys
out, n, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rate = {}
for spec in runs:
    tag, rc, wall = spec.split(":")
    lines = [json.loads(l) for l in open(os.path.join(out, tag + ".jsonl")) if l.startswith("{")]
    done = [l for l in lines if l.get("status") == "done"]
    hashes = {l["hash"] for l in done}
    pngs = [f for f in os.listdir(os.path.join(out, tag)) if f.endswith(".png")] \
        if os.path.isdir(os.path.join(out, tag)) else []
    manifest = os.path.join(out, tag, "results.jsonl")
    listed = sum(1 for _ in open(manifest)) if os.path.exists(manifest) else 0
    per = {}
    for l in done:
        per[l.get("device", "?")] = per.get(l.get("device", "?"), 0) + 1
    # The batch's own figure: images over its running time, loads included.
    err = open(os.path.join(out, tag + ".err")).read()
    own = [l for l in err.splitlines() if " images in " in l]
    r = n / float(wall)
    rate[tag] = r
    print(f"{tag}: exit {rc}, {len(done)} done of {n} ({len(hashes)} distinct), {len(pngs)} PNGs, "
          f"{listed} manifest lines, per device {per}; {r:.2f} images/s over {wall} s wall")
    if own:
        print(f"  batch said: {own[-1]}")
    gpus = {}
    for row in csv.reader(open(os.path.join(out, tag + ".smi"))):
        try:
            i, util, mem = (int(x.strip()) for x in row)
        except ValueError:
            continue
        g = gpus.setdefault(i, [0, 0, 0])
        g[0] += util; g[1] += 1; g[2] = max(g[2], mem)
    for i, (u, k, m) in sorted(gpus.items()):
        print(f"  GPU {i}: mean utilisation {u / k:.0f} % over {k} samples, peak memory {m} MiB")
tags = list(rate)
if len(tags) >= 2:
    print(f"scaling {tags[1]} / {tags[0]}: {rate[tags[1]] / rate[tags[0]]:.2f}x (target 1.8x)")
PY
}

one=$(run one "${ONE:-cuda:0}")
two=$(run two "$DEVICES")
summary "one:${one// /:}" "two:${two// /:}" | tee "$OUT/summary.txt"

# A kill -9 mid-run, then a rerun into the same folder: the set completes, each job once.
rm -rf "$OUT/killed"
"$BIN" batch "$OUT/jobs.jsonl" --model "$MODEL" --device "$DEVICES" --out "$OUT/killed" \
  > "$OUT/killed-1.jsonl" 2> "$OUT/killed-1.err" &
pid=$!
for _ in $(seq 600); do
  [ "$(grep -c '"status":"done"' "$OUT/killed-1.jsonl" 2>/dev/null)" -ge "$RESULTS" ] && break
  sleep 0.5
done
kill -9 "$pid"; wait "$pid" 2>/dev/null
"$BIN" batch "$OUT/jobs.jsonl" --model "$MODEL" --device "$DEVICES" --out "$OUT/killed" \
  > "$OUT/killed-2.jsonl" 2> "$OUT/killed-2.err"
python3 - "$OUT" "$N" <<'PY' | tee -a "$OUT/summary.txt"
import json, os, sys
out, n = sys.argv[1], int(sys.argv[2])
first = [json.loads(l) for l in open(os.path.join(out, "killed-1.jsonl")) if l.startswith("{")]
second = [json.loads(l) for l in open(os.path.join(out, "killed-2.jsonl")) if l.startswith("{")]
ran = lambda ls: [l["hash"] for l in ls if l.get("status") == "done"]
a, b = ran(first), ran(second)
skipped = [l for l in second if l.get("status") == "skipped"]
listed = [json.loads(l)["hash"] for l in open(os.path.join(out, "killed", "results.jsonl"))]
pngs = [f for f in os.listdir(os.path.join(out, "killed")) if f.endswith(".png")]
ok = len(set(listed)) == n and len(listed) == n and len(pngs) == n and not set(a) & set(b)
print(f"kill -9 after {len(a)} results, rerun: {len(b)} ran, {len(skipped)} skipped; manifest "
      f"{len(listed)} lines ({len(set(listed))} distinct), {len(pngs)} PNGs: "
      f"{'the set is complete, each job once' if ok else 'NOT complete or repeated'}")
PY
