#!/usr/bin/env python3
"""Moves a fused graph's convolution biases into the SkipGroupNorm that reads the convolution.

In the fused UNet and VAE decoder every conv is an NhwcConv whose bias cuDNN adds in a kernel of its
own after the convolution (`op_generic_tensor_kernel`: 0.61 ms of the SD1.5 UNet's 6.92 ms per step,
1.85 of the 512² VAE decoder's 10.3 ms, H100 2026-12-07). ONNX Runtime's `fuse_conv_bias` removes
those adds but plans every fused convolution at each new shape's first run (seconds), so it is off by
default. A SkipGroupNorm computes GroupNorm(X + skip + bias) and has an optional `bias` input (C,)
that the shipped graphs leave empty: where a conv's output is read by one SkipGroupNorm only (as X or
as skip) and nothing else, the conv can drop its bias and the SkipGroupNorm add it, one per
SkipGroupNorm. The sum output the SkipGroupNorm may also give (X + skip + bias, read by the residual
path) is the same sum as before. The initializer keeps its name, so weight maps, adapters and
resident weights reach it unchanged.

Applied since 2026-12-07: `ort_fused.py` (the fused UNet) and `vae_fused.py` (the fused VAE decoder)
call `fold`, and the shipped fp16 templates were folded with `--write`. Measured on an H100 with
`scripts/unet_profile.py --graphs cuda,cuda-bias` (ONNX Runtime alone, before the templates were
folded): SD1.5 UNet GPU busy 6.89 -> 6.66 ms per CFG step (bias adds 0.61 -> 0.34 ms), 512² VAE
decoder 10.29 -> 9.74 ms (1.85 -> 1.31 ms); outputs within fp16 rounding (max abs 6.1e-05: the bias
is added in fp32 inside the norm instead of rounded into the conv's fp16 output). `scripts/gpu_check.sh`
passes on the folded templates (SD1.5, SD2, SD1.5 inpainting, SDXL). On a folded graph it finds
nothing more to move.

    python scripts/conv_bias_fold.py templates/sd15-fp16      # counts what it would fold (CPU)
    python scripts/conv_bias_fold.py templates/sd15-fp16 --write   # folds the template's graphs
"""
import argparse
import gzip
import os

import onnx


def _wiring(g):
    """Each value's producing node, how many inputs read each value, the graph's output names."""
    producer = {o: n for n in g.node for o in n.output}
    readers = {}
    for n in g.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    return producer, readers, {o.name for o in g.output}


def fold(model):
    """Folds in place; returns how many conv biases moved."""
    g = model.graph
    producer, readers, outputs = _wiring(g)
    moved = 0
    for norm in g.node:
        if norm.op_type != "SkipGroupNorm":
            continue
        if len(norm.input) >= 5 and norm.input[4]:
            continue
        for slot in (0, 3):
            if slot >= len(norm.input) or not norm.input[slot]:
                continue
            x = norm.input[slot]
            conv = producer.get(x)
            if conv is None or conv.op_type != "NhwcConv" or len(conv.input) < 3 or not conv.input[2]:
                continue
            if x in outputs or readers.get(x, 0) != 1:
                continue
            bias = conv.input[2]
            del conv.input[2]
            while len(norm.input) < 4:
                norm.input.append("")
            if len(norm.input) == 4:
                norm.input.append(bias)
            else:
                norm.input[4] = bias
            moved += 1
            break
    return moved


def fold_groupnorms(model):
    """Experimental, not applied to any template: the conv biases that `fold` leaves because their
    conv is read by a plain GroupNorm (the resnets' conv1 → norm2, in the VAE decoder 26 bias adds
    that cuDNN runs as kernels of their own: 5.2 ms of SDXL's 1024² decode, fp16 or f32, H100
    2026-12-07). GroupNorm has no bias input, so the norm becomes a SkipGroupNorm whose skip is zeros
    of shape (N, 1, 1, C), N read from the conv's output at run time (ONNX Runtime wants the skip's
    batch to match), and whose bias is the conv's. Whether ONNX Runtime's CUDA kernel takes that skip
    and what it saves is for `scripts/unet_profile.py --graphs fused,fused-gnb` on a GPU; the wiring
    is checked on the CPU by `python scripts/conv_bias_fold.py --check-gn FOLDER` (a model folder
    with a fused VAE decoder). Folds in place; returns how many moved."""
    from onnx import helper, numpy_helper
    import numpy as np

    g = model.graph
    producer, readers, outputs = _wiring(g)
    inits = {i.name: i for i in g.initializer}
    elem = {}
    for v in list(g.value_info) + list(g.input) + list(g.output):
        elem[v.name] = v.type.tensor_type.elem_type
    out, moved = [], 0
    for norm in g.node:
        conv = producer.get(norm.input[0]) if norm.op_type == "GroupNorm" else None
        x = norm.input[0] if conv is not None else None
        if (conv is None or conv.op_type != "NhwcConv" or len(conv.input) < 3 or not conv.input[2]
                or x in outputs or readers.get(x, 0) != 1 or conv.input[2] not in inits):
            out.append(norm)
            continue
        bias = conv.input[2]
        channels = int(inits[bias].dims[0])
        dtype = elem.get(x, inits[bias].data_type)
        tag = f"gnb{moved}/"
        np_t = {onnx.TensorProto.FLOAT16: np.float16}.get(dtype, np.float32)
        shape = helper.make_node("Shape", [x], [tag + "shape"], start=0, end=1)
        dims = numpy_helper.from_array(np.array([1, 1, channels], dtype=np.int64), tag + "hwc")
        g.initializer.append(dims)
        concat = helper.make_node("Concat", [tag + "shape", tag + "hwc"], [tag + "dims"], axis=0)
        zeros = helper.make_node("ConstantOfShape", [tag + "dims"], [tag + "zeros"],
                                 value=numpy_helper.from_array(np.zeros(1, dtype=np_t)))
        del conv.input[2]
        skip = helper.make_node("SkipGroupNorm", [x, norm.input[1], norm.input[2], tag + "zeros", bias],
                                [norm.output[0]], name=norm.name, domain=norm.domain)
        skip.attribute.extend(norm.attribute)
        out += [shape, concat, zeros, skip]
        moved += 1
    del g.node[:]
    g.node.extend(out)
    return moved


def norm_biases(model):
    return [n.input[4] for n in model.graph.node
            if n.op_type == "SkipGroupNorm" and len(n.input) > 4 and n.input[4]]


def check(model, before, moved):
    """`moved` more SkipGroupNorms have a bias (`before`: how many had one), and no bias is read by
    a conv and a norm both."""
    g = model.graph
    conv_biases = {n.input[2] for n in g.node if n.op_type == "NhwcConv" and len(n.input) > 2}
    got = norm_biases(model)
    assert len(got) == before + moved, (len(got), before, moved)
    assert not conv_biases & set(got), "a bias is added twice"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("template")
    ap.add_argument("--write", action="store_true", help="write the folded graphs back into the template")
    ap.add_argument("--check-gn", action="store_true",
                    help="TEMPLATE is a model folder: run scripts/vae_fused.py's CPU check on its fused "
                         "VAE decoder with fold_groupnorms applied (a copy; the folder is not changed)")
    a = ap.parse_args()
    if a.check_gn:
        check_groupnorm_fold(a.template)
        return
    for comp, name in (("unet", "model.cuda.onnx.gz"), ("vae_decoder", "model.fused.onnx.gz")):
        path = os.path.join(a.template, comp, name)
        if not os.path.exists(path):
            continue
        m = onnx.ModelProto.FromString(gzip.open(path).read())
        convs = sum(1 for n in m.graph.node if n.op_type == "NhwcConv")
        before = len(norm_biases(m))
        moved = fold(m)
        check(m, before, moved)
        if a.write:
            with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
                f.write(m.SerializeToString())
            print(f"{comp}: {moved} of {convs} conv biases moved into a SkipGroupNorm ({path})")
        else:
            print(f"{comp}: {moved} of {convs} conv biases would move into a SkipGroupNorm")


def check_groupnorm_fold(folder):
    """vae_fused.py's CPU check (contrib operators decomposed into standard ones) on a copy of
    `folder` whose fused VAE decoder went through `fold_groupnorms`, after the same check on the
    folder as it is: the two must agree with the fp32 graph alike."""
    import shutil
    import sys
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import vae_fused

    vae_fused.check(folder)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "model")
        shutil.copytree(folder, copy)
        path = os.path.join(copy, "vae_decoder", "model.fused.onnx")
        m = onnx.load(path, load_external_data=False)
        print(f"fold_groupnorms: {fold_groupnorms(m)} GroupNorms now add their conv's bias")
        onnx.save(m, path)
        vae_fused.check(copy)


if __name__ == "__main__":
    main()
