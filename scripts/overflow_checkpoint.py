#!/usr/bin/env python3
"""A checkpoint whose VAE overflows fp16: a copy of IN with the decoder's `post_quant_conv` weight
scaled so its largest value is 5·10⁴ (still an fp16 number), which makes the fp16 decoder's first
convolution overflow on any latent while fp32 decodes it. Used to run the fp16 → fp32 fallback on a
GPU, where random weights never overflow:

    python3 scripts/overflow_checkpoint.py /tmp/sd15.safetensors /tmp/sd15-hot.safetensors
    stipple bench --device cuda:0 --model /tmp/sd15-hot.safetensors   # logs the overflow once;
                                                                       # then "VAE decode (fp32, ...)"
"""
import argparse

import numpy as np
from safetensors.numpy import load_file, save_file

KEYS = ("first_stage_model.post_quant_conv.weight", "post_quant_conv.weight", "vae.post_quant_conv.weight")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--max", type=float, default=5e4, help="the scaled weight's largest magnitude")
    a = ap.parse_args()
    d = load_file(a.src)
    key = next((k for k in KEYS if k in d), None)
    if key is None:
        raise SystemExit(f"{a.src}: no post_quant_conv weight (looked for {', '.join(KEYS)})")
    w = d[key].astype(np.float32)
    d[key] = (w * (a.max / np.abs(w).max())).astype(d[key].dtype)
    save_file(d, a.dst)
    print(f"{a.dst}: {key} scaled to at most {a.max:g}")


if __name__ == "__main__":
    main()
