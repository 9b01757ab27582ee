#!/usr/bin/env python3
"""Writes a kohya-format LoRA with random factors for a model folder's UNet (and text encoder):
every attention, feed-forward and projection Linear / 1x1 conv, at real shapes. For benchmarks.
--layers attn keeps only the attention projections (to_q/k/v/out, q/k/v/out_proj); --layers all adds
every other Linear and conv of the UNet (LoCon: resnet 3x3 convs, shortcuts, time embeddings, samplers).

    python scripts/synth_lora.py MODEL_DIR OUT.safetensors [--rank 32] [--te] [--layers attn|default|all]

Needs numpy and safetensors only (reads the model's weights.safetensors headers).
"""
import argparse
import json
import struct


def arg_parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--te", action="store_true", help="also the text encoder")
    ap.add_argument("--layers", choices=("attn", "default", "all"), default="default",
                    help="attn: attention projections only; all: every UNet Linear and conv (LoCon)")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import numpy as np
from safetensors.numpy import save_file

ATTN = ("to_q.", "to_k.", "to_v.", "to_out.0.", "q_proj.", "k_proj.", "v_proj.", "out_proj.")
TARGETS = ATTN + ("ff.net.0.proj.", "ff.net.2.", "proj_in.", "proj_out.", "fc1.", "fc2.")
# What LoCon adds in the UNet; conv_in / conv_out and the norms stay out, as kohya's LoCon leaves them.
CONVS = ("conv1.", "conv2.", "conv_shortcut.", "time_emb_proj.", "downsamplers.0.conv.", "upsamplers.0.conv.",
         "time_embedding.linear_1.", "time_embedding.linear_2.", "add_embedding.linear_1.", "add_embedding.linear_2.")


def wanted(name, comp, layers):
    if layers == "attn":
        return any(t in name for t in ATTN)
    if any(t in name for t in TARGETS):
        return True
    return layers == "all" and comp == "unet" and any(t in name for t in CONVS)


def shapes(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def main():
    a = arg_parser().parse_args()
    rng = np.random.default_rng(0)
    tensors = {}
    parts = [("unet", "lora_unet_")] + ([("text_encoder", "lora_te_")] if a.te else [])
    for comp, prefix in parts:
        for name, shape in shapes(f"{a.model}/{comp}/weights.safetensors").items():
            if not name.endswith(".weight") or not wanted(name, comp, a.layers) or len(shape) < 2:
                continue
            if len(shape) == 4 and shape[2:] != [1, 1] and a.layers != "all":
                continue
            module = name[: -len(".weight")]
            if comp == "text_encoder":
                module = module.removeprefix("text_model.")
            key = prefix + module.replace(".", "_")
            out_f, in_f = shape[0], shape[1]
            kernel = list(shape[2:]) if len(shape) == 4 else []
            r = min(a.rank, out_f, in_f)
            fan_in = in_f * int(np.prod(kernel or [1]))
            # kohya's LoCon: the kernel sits in the down factor, the up factor is 1x1.
            tensors[key + ".lora_down.weight"] = (rng.standard_normal([r, in_f] + kernel) / fan_in**0.5).astype(np.float16)
            tensors[key + ".lora_up.weight"] = (rng.standard_normal([out_f, r] + [1] * len(kernel)) * 0.01).astype(np.float16)
            tensors[key + ".alpha"] = np.array(float(r), dtype=np.float16)
    save_file(tensors, a.out, metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(a.rank)})
    print(f"wrote {a.out}: {len(tensors) // 3} modules, rank {a.rank}")


if __name__ == "__main__":
    main()
