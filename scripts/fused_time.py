#!/usr/bin/env python3
"""Keeps the sinusoidal time projections of a fused CUDA UNet graph in fp32, as diffusers computes them.

    python scripts/fused_time.py templates/sdxl-fp16 templates/sd15-fp16 ...   # rewrites unet/model.cuda.onnx(.gz)
    python scripts/fused_time.py --check templates/sdxl-fp16                    # also runs the projections on the CPU

ORT's fp16 conversion (ort_fused._optimize) turns the whole graph to fp16, the `t * freqs` product and its
Sin/Cos included. diffusers casts the timestep to fp32 for that product (`timesteps[:, None].float()`), and
the plain graphs keep the cast. In fp16 the product carries an error of up to half a unit in the last place
of the argument: 0.25 rad for a timestep near 999, 0.5 rad for SDXL's size conditioning (time_ids of
1024), so the high-frequency half of the embedding is noise. This pass gives each projection back its
fp32 product: the fp16 input is cast to fp32, multiplied by the frequencies in fp32 (recomputed with
diffusers' formula and checked against the graph's fp16 copy of them), Sin and Cos run in fp32, and their
results are cast back to fp16 where the rest of the graph reads them (diffusers casts the embedding to the
UNet's dtype the same way). Idempotent: a projection already in fp32 is left alone. Weights and weight
maps do not change.

--check extracts each projection (timestep or time_ids in, the fp16 embedding out), runs it in ONNX
Runtime on the CPU for timesteps across the schedule and SDXL's size conditioning, and compares with the
embedding computed in float64 from the same (fp16) inputs; it fails above 1e-3 (fp16 rounding of values
in [-1, 1] is at most 4.9e-4), and prints what the fp16 product gave, emulated in numpy.
"""
import argparse
import gzip
import math
import os
import sys

import numpy as np

FP32 = 1
FP16 = 10


def _attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def frequencies(half, reference):
    """diffusers' get_timestep_embedding frequencies for `half` dims in fp32, with the
    downscale_freq_shift (0 or 1) whose fp16 rounding is `reference` (the graph's fp16 copy)."""
    ref = reference.astype(np.float32)
    for shift in (0, 1):
        exponent = np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32) / np.float32(half - shift)
        freqs = np.exp(exponent).astype(np.float32)
        if np.allclose(freqs, ref, rtol=1e-3, atol=0):
            return freqs
    raise ValueError(f"frequencies of {half} values match neither downscale_freq_shift 0 nor 1")


def time_projections(graph):
    """(mul, constant node, other input, sin, cos) of every `x * freqs -> Sin, Cos` in `graph`."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for mul in graph.node:
        if mul.op_type != "Mul":
            continue
        readers = consumers.get(mul.output[0], [])
        sin = [n for n in readers if n.op_type == "Sin"]
        cos = [n for n in readers if n.op_type == "Cos"]
        if len(sin) != 1 or len(cos) != 1 or len(readers) != 2:
            continue
        const = [(k, producer.get(i)) for k, i in enumerate(mul.input)]
        const = [(k, p) for k, p in const if p is not None and p.op_type == "Constant"]
        if len(const) != 1:
            raise ValueError(f"{mul.name}: the time projection's frequencies are not one Constant")
        k, c = const[0]
        found.append((mul, c, mul.input[1 - k], sin[0], cos[0]))
    return found


def keep_fp32(model):
    """Rewrites every time projection of `model` (a ModelProto) to compute in fp32; returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    done = 0
    while True:
        # Rebuilt after every rewrite: replacing the node list copies the nodes.
        todo = [p for p in time_projections(g) if _attr(p[1], "value").t.data_type != FP32]
        if not todo:
            break
        mul, const, x, sin, cos = todo[0]
        tensor = _attr(const, "value").t
        if tensor.data_type != FP16:
            raise ValueError(f"{const.name}: frequencies of type {tensor.data_type}")
        fp16 = numpy_helper.to_array(tensor)
        freqs = frequencies(fp16.size, fp16.reshape(-1)).reshape(fp16.shape)
        tag = mul.name or mul.output[0]
        c32 = helper.make_node("Constant", [], [f"{tag}/freqs_fp32"], name=f"{tag}/freqs_fp32",
                               value=numpy_helper.from_array(freqs, f"{tag}/freqs_fp32"))
        x32 = helper.make_node("Cast", [x], [f"{tag}/input_fp32"], name=f"{tag}/input_fp32", to=FP32)
        product = mul.output[0]
        mul.input[:] = [x32.output[0], c32.output[0]]
        mul.output[0] = product + "_fp32"
        back = []
        for trig in (sin, cos):
            trig.input[0] = mul.output[0]
            out = trig.output[0]
            trig.output[0] = out + "_fp32"
            back.append(helper.make_node("Cast", [trig.output[0]], [out], name=f"{trig.name}/to_fp16", to=FP16))
        nodes = list(g.node)
        at = nodes.index(mul)
        nodes[at:at] = [c32, x32]
        last = max(nodes.index(sin), nodes.index(cos))
        nodes[last + 1:last + 1] = back
        del g.node[:]
        g.node.extend(nodes)
        stale = {product, sin.output[0][:-5], cos.output[0][:-5]}
        keep = [v for v in g.value_info if v.name not in stale]
        del g.value_info[:]
        g.value_info.extend(keep)
        done += 1
    return done


def _graph_path(arg):
    for p in (arg, os.path.join(arg, "unet", "model.cuda.onnx"), os.path.join(arg, "unet", "model.cuda.onnx.gz")):
        if os.path.isfile(p):
            return p
    raise SystemExit(f"{arg}: no unet/model.cuda.onnx(.gz)")


def load(path):
    import onnx

    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return onnx.load_from_string(f.read())
    return onnx.load(path, load_external_data=False)


def save(model, path):
    data = model.SerializeToString()
    if path.endswith(".gz"):
        # mtime 0: the same graph gives the same bytes.
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def check(model, label):
    """Runs each projection of `model` (already in fp32) on the CPU against float64; returns the worst
    error."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    g = model.graph
    inputs = {i.name: i for i in g.input}
    producer = {o: n for n in g.node for o in n.output}
    worst = 0.0
    for mul, const, x, sin, cos in time_projections(g):
        # Every node from the graph inputs to the fp16 casts after Sin and Cos.
        outputs = [c.output[0] for c in g.node if c.op_type == "Cast" and c.input and c.input[0] in
                   (sin.output[0], cos.output[0])]
        wanted, reached = set(), []
        stack = list(outputs)
        while stack:
            o = stack.pop()
            if o in inputs and o not in reached:
                reached.append(o)
            n = producer.get(o)
            if n is None or id(n) in wanted:
                continue
            wanted.add(id(n))
            stack.extend(i for i in n.input if i)
        source = "timestep" if "timestep" in reached else "time_ids"
        nodes = [n for n in g.node if id(n) in wanted]
        sub = helper.make_graph(
            nodes, "time", [inputs[r] for r in reached],
            [helper.make_tensor_value_info(o, FP16, None) for o in outputs])
        sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        sess = ort.InferenceSession(sub_model.SerializeToString(), providers=["CPUExecutionProvider"])
        freqs = numpy_helper.to_array(_attr(producer[mul.input[1]], "value").t).astype(np.float64).reshape(-1)
        if source == "timestep":
            values = [np.array([t], np.float16) for t in (999.0, 937.4, 501.3, 1.0)]
        else:
            values = [np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float16),
                      np.array([[832, 1216, 16, 48, 832, 1216]], np.float16)]
        for v in values:
            feeds = {source: v}
            for r in reached:
                if r != source:
                    dims = [d.dim_value or 1 for d in inputs[r].type.tensor_type.shape.dim]
                    dims[0] = v.shape[0]
                    feeds[r] = np.zeros([d if k < 2 else 8 for k, d in enumerate(dims)], np.float16)
            got = sess.run(None, feeds)
            flat = v.astype(np.float64).reshape(-1)
            arg = flat[:, None] * freqs[None, :]
            ref = [np.sin(arg), np.cos(arg)]
            old_arg = (v.astype(np.float16).reshape(-1)[:, None] * freqs.astype(np.float16)[None, :]).astype(
                np.float16)
            old = [np.sin(old_arg.astype(np.float32)).astype(np.float16),
                   np.cos(old_arg.astype(np.float32)).astype(np.float16)]
            err = max(float(np.abs(got[k].astype(np.float64).reshape(ref[k].shape) - ref[k]).max()) for k in range(2))
            err_old = max(float(np.abs(old[k].astype(np.float64) - ref[k]).max()) for k in range(2))
            worst = max(worst, err)
            print(f"{label} {mul.name} {source}={flat.tolist()}: max abs error {err:.2e} in fp32 "
                  f"(the fp16 product: {err_old:.2e})")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="model folders, template folders or fused graphs")
    ap.add_argument("--check", action="store_true", help="run each projection on the CPU against float64")
    args = ap.parse_args()
    failed = False
    for arg in args.paths:
        path = _graph_path(arg)
        model = load(path)
        n = keep_fp32(model)
        if n:
            save(model, path)
        print(f"{path}: {n} time projections moved to fp32, {len(time_projections(model.graph))} in all")
        if args.check:
            worst = check(model, arg)
            if worst > 1e-3:
                print(f"{arg}: FAIL, {worst:.2e} above 1e-3")
                failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
