#!/usr/bin/env python3
"""Adds the fp16 graph of each text encoder (`text_encoder`, SDXL's `text_encoder_2`; CLIP-L, OpenCLIP-H
and -bigG alike) to stipple model folders and architecture templates: `model.cuda.onnx` +
`weightmap.cuda.json` beside the fp32 graph, which stipple runs with `--te-precision fp16` (auto on a GPU).

    python scripts/te_fp16.py templates/sd15-fp16 tests/fixtures/tiny-sd15 ...
    python scripts/te_fp16.py --check tests/fixtures/tiny-sd15    # also compares fp16 with fp32 in ORT

The conversion is vae_fp16.py's (ONNX Runtime's float16 conversion of the fp32 graph with fp32 inputs
and outputs; weight map entries redone, names and sources kept), from the fp32 graph, not a torch
export in fp16: transformers' CLIP exported in half precision feeds fp32 activations to LayerNorms
with fp16 weights (24 of the 25 in the tiny SD1.5 encoder), a graph onnx.checker and ONNX Runtime
refuse ("bound to different types"), which is why the text encoders are exported in fp32 only.
Every operator of the converted graph runs in fp16,
LayerNorm, Softmax and the final projection included: ONNX Runtime's LayerNormalization and Softmax
accumulate in fp32 for fp16 inputs, and the checks (`--check`, tests/it/te_precision.rs) find the
outputs within fp16 rounding of fp32. The causal mask's -inf constant stays -inf in fp16: every
row keeps its diagonal, so no softmax row is fully masked.

Needs onnx and onnxruntime (the /work/venv ones).
"""

import numpy as np

import vae_fp16

COMPONENTS = ("text_encoder", "text_encoder_2")
# Operators kept in fp32: the converter's default list (ONNX-ML and index ops: Range, Min, Max, ...),
# nothing more (see the module doc).
OP_BLOCK_LIST = None

BOS, EOS = 49406, 49407


def add_to(folder):
    """Writes the fp16 graph and weight map of each text encoder `folder` has; returns their names."""
    return vae_fp16.add_to(folder, COMPONENTS, OP_BLOCK_LIST)


def _feeds(comp, rng):
    """A prompt's ids: BOS, 20 random tokens, EOS, padded with EOS to 77 (what the pooled output reads)."""
    ids = np.full((1, 77), EOS, dtype=np.int64)
    ids[0, 0] = BOS
    ids[0, 1:21] = rng.integers(0, BOS, size=20)
    return {"input_ids": ids}


def check(folder):
    vae_fp16.check(folder, COMPONENTS, _feeds)


def main():
    vae_fp16.cli(__doc__, add_to, check, "text_encoder")


if __name__ == "__main__":
    main()
