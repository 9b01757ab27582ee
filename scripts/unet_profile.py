#!/usr/bin/env python3
"""Where a component's GPU time goes, outside stipple: a template's graph with random weights, run by
ONNX Runtime's CUDA provider through device buffers, timed launch by launch and as a CUDA graph, and
its GPU kernels summed by kind (torch.profiler sees every kernel of the process, ONNX Runtime's too).

    PYTHONPATH=/tmp/ort python3 scripts/unet_profile.py templates/sd15-fp16 [--size 512] [--batch 2]
        [--graphs cuda,cuda-shapes,plain] [--component unet|vae_decoder|text_encoder|text_encoder_2]
        [--static]

Graphs: `cuda` (the fused UNet as shipped; for a VAE or text encoder its fp16 graph), `fused` (the
VAE decoder's fused graph), `cuda-shapes` and `cuda-layout` (the UNet after
scripts/shape_transposes.py's `drop` or `sink`: their output is compared with `cuda`'s, which must be
equal), `cuda-bias` and `fused-bias` (the fused UNet or VAE decoder with scripts/conv_bias_fold.py's
conv biases moved into SkipGroupNorms: compared with `cuda`'s or `fused`'s output, equal within fp16
rounding), `fused32` and `fused-bias32` (those graphs made f32 throughout by
scripts/graph_fp32.py: compared with `fused`'s or `fused-bias`'s output), `fused-gnb` and `fused-gnb32`
(experimental: scripts/conv_bias_fold.py's `fold_groupnorms`, the conv biases read by plain GroupNorms
added inside them; compared with `fused`'s and `fused-gnb`'s output), `plain` (the plain export).
`--static` builds each session for the shapes it runs (ONNX Runtime's free-dimension overrides, as
stipple's static shapes; its text encoders always are).
Random weights give true speed figures (the kernels do not depend on the values); they are written
once per template to /tmp/unet-profile/.
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def arg_parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("template", help="a template folder, e.g. templates/sd15-fp16")
    ap.add_argument("--component", default="unet")
    ap.add_argument("--graphs", default="cuda,cuda-layout,plain")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default: the family's)")
    ap.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image with CFG)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--work", default="/tmp/unet-profile")
    ap.add_argument("--static", action="store_true", help="sessions built for the shapes they run")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()

# UNET_PROFILE_DEVICE=cpu tries the script itself on a machine without a GPU (plain graphs, no kernel
# profile, no CUDA graph).
DEV = os.environ.get("UNET_PROFILE_DEVICE", "cuda")

import onnx  # noqa: E402

if DEV == "cuda":
    import torch  # noqa: E402, F401  (first: its CUDA libraries are the ones ONNX Runtime loads too)
import onnxruntime as ort  # noqa: E402
from ort_timing import timed  # noqa: E402

import conv_bias_fold  # noqa: E402
import graph_fp32  # noqa: E402
import shape_transposes  # noqa: E402

NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}


def graph_file(template, component, name, work):
    """Writes the graph `name` with random weights (weights.bin) into work/; returns its path."""
    if name.startswith("fused"):
        base = "model.fused.onnx.gz"
    else:
        base = "model.cuda.onnx.gz" if name.startswith("cuda") else "model.onnx.gz"
    m = onnx.ModelProto.FromString(gzip.open(os.path.join(template, component, base)).read())
    tag = os.path.basename(os.path.normpath(template))
    d = os.path.join(work, f"{tag}-{component}-{name}")
    os.makedirs(d, exist_ok=True)
    if name == "cuda-shapes":
        print(f"{name}: {shape_transposes.drop(m)} Transposes read only by Shape dropped")
    if name.endswith("-bias") or name.endswith("-bias32"):
        print(f"{name}: {conv_bias_fold.fold(m)} conv biases moved into SkipGroupNorms")
    if "-gnb" in name:
        print(f"{name}: {conv_bias_fold.fold_groupnorms(m)} GroupNorms made SkipGroupNorms adding "
              f"their conv's bias (experimental)")
    if name.endswith("32"):
        print(f"{name}: {graph_fp32.fp32(m)} fp16 tensors, casts and values made f32")
    if name == "cuda-layout":
        print(f"{name}: {shape_transposes.sink(m)} Transposes removed (shape-only ones and those moved "
              f"through Add and Concat)")
    rng = np.random.default_rng(0)
    spans = []
    for init in m.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e.value for e in init.external_data}
        spans.append((int(ext.get("offset", 0)), int(ext["length"]), init.data_type, ext["location"]))
    weights = {}
    for off, length, dt, loc in spans:
        weights.setdefault(loc, []).append((off, length, dt))
    for loc, parts in weights.items():
        path = os.path.join(d, loc)
        end = max(o + n for o, n, _ in parts)
        if os.path.exists(path) and os.path.getsize(path) == end:
            continue
        with open(path, "wb") as f:
            f.truncate(end)
            for off, length, dt in parts:
                np_t = NP.get(dt)
                if np_t is None:
                    continue  # integer tables are small and rare; zeros do
                v = (rng.standard_normal(length // np.dtype(np_t).itemsize) * 0.02).astype(np_t)
                f.seek(off)
                f.write(v.tobytes())
    path = os.path.join(d, "model.onnx")
    onnx.save(m, path)
    return path


def session(path, graph, optimized=None, overrides=None, sdpa=0):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for name, value in (overrides or {}).items():
        so.add_free_dimension_override_by_name(name, value)
    if optimized:
        # What ONNX Runtime runs after its own graph passes (its transpose optimizer included).
        so.optimized_model_filepath = optimized
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.bin")
    prov = [("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1" if graph else "0",
                                       "cudnn_conv_algo_search": "HEURISTIC",
                                       "sdpa_kernel": str(sdpa)})]
    if DEV == "cpu":
        if graph:
            raise RuntimeError("no CUDA graph on the CPU")
        prov = ["CPUExecutionProvider"]
    return ort.InferenceSession(path, so, providers=prov)


def bind(sess, dims):
    """Device buffers for every input (random values; ids for a text encoder) and output of `sess`;
    `dims` holds each one's shape by name."""
    io = sess.io_binding()
    keep = {}
    rng = np.random.default_rng(1)
    types = {"tensor(float16)": np.float16, "tensor(int64)": np.int64}
    for i in sess.get_inputs():
        shape = dims[i.name]
        dt = types.get(i.type, np.float32)
        if i.name == "timestep":
            v = np.full(shape, 500, dtype=dt)
        elif dt == np.int64:
            v = rng.integers(0, 49406, size=shape).astype(dt)
            v[..., -1] = 49407  # an end token for the pooled output's lookup
        else:
            v = rng.standard_normal(shape).astype(dt)
        o = ort.OrtValue.ortvalue_from_numpy(v, DEV, 0)
        keep[i.name] = o
        io.bind_ortvalue_input(i.name, o)
    for o in sess.get_outputs():
        dt = types.get(o.type, np.float32)
        v = ort.OrtValue.ortvalue_from_shape_and_type(dims[o.name], dt, DEV, 0)
        keep[o.name] = v
        io.bind_ortvalue_output(o.name, v)
    return io, keep


def shapes(m, component, size, batch):
    """Each input's and output's shape by name, and the free dimensions they fix."""
    def dims_of(name, values):
        return [d.dim_value for d in next(v for v in values if v.name == name).type.tensor_type.shape.dim]

    if component == "unet":
        ctx = dims_of("encoder_hidden_states", m.graph.input)
        chans = dims_of("sample", m.graph.input)[1]
        lat = [batch, chans, size // 8, size // 8]
        return ({"sample": lat, "out_sample": [batch, 4, size // 8, size // 8], "timestep": [batch],
                 "encoder_hidden_states": [batch, 77, ctx[2]], "text_embeds": [batch, 1280],
                 "time_ids": [batch, 6]},
                {"batch": batch, "height": size // 8, "width": size // 8, "sequence": 77})
    if component.startswith("vae"):
        return ({"latent_sample": [1, 4, size // 8, size // 8], "sample": [1, 3, size, size]},
                {"batch": 1, "height": size // 8, "width": size // 8})
    # A text encoder: one 77-token chunk; [batch, sequence, width] or [batch, width] out.
    out = {}
    for o in m.graph.output:
        d = [x.dim_value for x in o.type.tensor_type.shape.dim]
        out[o.name] = [1, 77, d[2]] if len(d) == 3 else [1, d[1]]
    return {"input_ids": [1, 77], **out}, {"batch": 1, "sequence": 77}


# First match wins: norms before convolutions, whose keys ("nhwc") ONNX Runtime's GroupNormNHWC
# kernels also carry; cuDNN's generic elementwise op (the bias add after a convolution) on its own.
KINDS = (("attention", ("fmha", "flash", "attention", "mha", "softmax")),
         ("norm", ("groupnorm", "group_norm", "layernorm", "layer_norm", "skip")),
         ("cudnn add (conv bias)", ("op_generic_tensor",)),
         ("conv", ("conv", "implicit", "xmma", "cudnn", "sm90_xmma", "nhwc")),
         ("gemm", ("gemm", "cutlass", "sm90", "ampere", "cublas")),
         ("transpose", ("transpose",)),
         ("copy", ("memcpy", "memset")))


def kind(name):
    n = name.lower()
    for k, keys in KINDS:
        if any(s in n for s in keys):
            return k
    return "elementwise/other"


def profile(sess, io, top, runs=3):
    if DEV != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile as tprofile

    with tprofile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(runs):
            sess.run_with_iobinding(io)
        io.synchronize_outputs()
        torch.cuda.synchronize()
    rows, kinds = {}, {}
    for e in p.events():
        if e.device_type.name != "CUDA":
            continue
        r = rows.setdefault(e.name[:80], [0, 0.0])
        r[0] += 1
        r[1] += e.device_time / 1e3
        k = kinds.setdefault(kind(e.name), [0, 0.0])
        k[0] += 1
        k[1] += e.device_time / 1e3
    total = sum(v[1] for v in rows.values()) / runs
    count = sum(v[0] for v in rows.values()) // runs
    print(f"  GPU busy per run: {total:.3f} ms in {count} kernels")
    for name, (n, ms) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<22} {ms / runs:8.3f} ms {100 * ms / runs / max(total, 1e-9):5.1f}% {n // runs:5d} kernels")
    for name, (n, ms) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"    {ms / runs:8.3f} ms {n // runs:5d}x  {name}")
    return total


def main():
    a = arg_parser().parse_args()
    with open(os.path.join(a.template, "model_index.json")) as f:
        xl = json.load(f).get("family") == "sdxl"
    size = a.size or (1024 if xl else 512)
    outputs = {}
    for name in a.graphs.split(","):
        base, _, sdpa = name.partition("@")
        sdpa = int(sdpa or 0)
        path = graph_file(a.template, a.component, base, a.work)
        m = onnx.load(path, load_external_data=False)
        dims, free = shapes(m, a.component, size, a.batch)
        fixed = free if a.static else None
        batch = f", batch {a.batch}" if a.component == "unet" else ""
        print(f"{name}: {a.component}, {len(m.graph.node)} nodes{batch}, {size}x{size}"
              f"{', static shapes' if a.static else ''}")
        opt = os.path.join(os.path.dirname(path), "optimized.onnx")
        try:
            s = session(path, False, opt, fixed, sdpa)
            om = onnx.load(opt, load_external_data=False)
            ops = {}
            for n in om.graph.node:
                ops[n.op_type] = ops.get(n.op_type, 0) + 1
            print(f"  after ONNX Runtime's passes: {len(om.graph.node)} nodes, "
                  f"{ops.get('Transpose', 0)} Transpose, {ops.get('Cast', 0)} Cast, "
                  f"{sum(v for k, v in ops.items() if k.startswith('Memcpy'))} Memcpy")
        except Exception as e:  # the optimized graph could not be written: time the graph anyway
            print(f"  (optimized graph not written: {str(e).splitlines()[0][:120]})")
            s = session(path, False, overrides=fixed, sdpa=sdpa)
        io, keep = bind(s, dims)
        print(f"  launch by launch: {timed(s, io, a.runs):.3f} ms per run")
        profile(s, io, a.top)
        outputs[name] = keep[s.get_outputs()[0].name].numpy().astype(np.float32)
        del io, keep, s
        try:
            g = session(path, True, overrides=fixed, sdpa=sdpa)
            io, keep = bind(g, dims)
            print(f"  CUDA graph:       {timed(g, io, a.runs):.3f} ms per run")
            del io, keep, g
        except Exception as e:  # a graph ORT cannot capture: say so, go on
            print(f"  CUDA graph: not captured ({str(e).splitlines()[0][:120]})")
        sys.stdout.flush()
    for other in ("cuda-shapes", "cuda-layout"):
        if "cuda" in outputs and other in outputs:
            d = np.abs(outputs["cuda"] - outputs[other])
            print(f"{other} vs cuda output: max abs difference {d.max():.3g} "
                  f"(mean {d.mean():.3g}; the same kernels on the same values: must be 0)")
    for name, out in outputs.items():
        base = name.partition("@")[0]
        if "@" in name and base in outputs:
            d = np.abs(outputs[base] - out)
            print(f"{name} vs {base} output: max abs difference {d.max():.3g} (mean {d.mean():.3g}; "
                  f"another attention kernel: fp16 rounding, not 0)")
    for name, out in outputs.items():
        base = name[:-2]
        if name.endswith("32") and base in outputs:
            d = np.abs(outputs[base] - out)
            print(f"{name} vs {base} output: max abs difference {d.max():.3g} (mean {d.mean():.3g}; "
                  f"the same weights, fp16 rounded in {base}: fp16 rounding, not 0)")
    for name, out in outputs.items():
        if name.endswith("-gnb") and name[:-4] in outputs:
            d = np.abs(outputs[name[:-4]] - out)
            print(f"{name} vs {name[:-4]} output: max abs difference {d.max():.3g} (mean {d.mean():.3g}; "
                  f"the bias added in f32 inside the norm: fp16 rounding, not 0)")
    for shipped in ("cuda", "fused"):
        other = f"{shipped}-bias"
        if shipped in outputs and other in outputs:
            d = np.abs(outputs[shipped] - outputs[other])
            scale = np.abs(outputs[shipped]).max()
            print(f"{other} vs {shipped} output: max abs difference {d.max():.3g} (mean {d.mean():.3g}, "
                  f"output magnitude up to {scale:.3g}; fp16 rounding, not 0)")


if __name__ == "__main__":
    main()
