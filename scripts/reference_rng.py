#!/usr/bin/env python3
"""Reference normals for stipple's TorchRng (src/pipeline/rng.rs).

Writes tests/fixtures/reference/rng.json: for several seeds, a sequence of torch.randn calls on ONE
torch.Generator("cpu") (so generator state, including the cached scalar-path normal, carries over),
with each call's shape and values. Large tensors keep only a sample of indices (first/last 16 and
a stride) to keep the file small, plus the f64 sum of all values.
Needs: torch (the /work/venv one). Run: /work/venv/bin/python scripts/reference_rng.py
"""
import argparse
import json
import math
import pathlib


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/reference/rng.json"

SEEDS = [0, 1, 2**32 + 5, 1234567890123]
# Each sequence runs on one generator; single-shape sequences cover each shape on its own.
SEQUENCES = [[(4,)], [(7,)], [(16,)], [(25,)], [(1, 4, 8, 8)], [(2, 4, 8, 8)], [(1, 4, 64, 64)],
             # successive calls: scalar cache crossing a vectorized call, and Euler-a-like reuse
             [(3,), (16,), (1,), (2,)],
             [(1, 4, 8, 8), (1, 4, 8, 8), (7,), (25,)]]
FULL_LIMIT = 32  # store every value up to this many elements
SPREAD = 40  # roughly how many evenly spaced values to keep beyond the first/last 16


def sample_indices(n):
    if n <= FULL_LIMIT:
        return None
    idx = set(range(16)) | set(range(n - 16, n)) | set(range(0, n, n // SPREAD + 1))
    return sorted(idx)


def main():
    cases = []
    for seed in SEEDS:
        for seq in SEQUENCES:
            g = torch.Generator("cpu").manual_seed(seed)
            calls = []
            for shape in seq:
                t = torch.randn(shape, generator=g, dtype=torch.float32).flatten()
                n = t.numel()
                idx = sample_indices(n)
                vals = t.tolist() if idx is None else [t[i].item() for i in idx]
                calls.append({"shape": list(shape), "numel": n, "indices": idx, "values": vals,
                              "sum": math.fsum(t.double().tolist())})
            cases.append({"seed": seed, "calls": calls})
    meta = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
