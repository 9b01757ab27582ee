#!/usr/bin/env python3
"""Times and profiles stipple's patch programs on a GPU, outside stipple: where a strength change's
milliseconds go, kernel by kernel.

    STIPPLE_DUMP_PATCH=/tmp/dump stipple bench --device cuda:0 --model M --lora L --live   # writes them
    PYTHONPATH=/tmp/ort python3 scripts/patch_profile.py /tmp/dump/*/                   # on the GPU box

For each program folder (program.onnx + patch_program.bin): the inputs get random values on the GPU, the
outputs preallocated device buffers (as stipple binds the resident weights); then the mean run time
launch by launch and replayed as a CUDA graph, and the GPU kernels of a few uncaptured runs summed by
name (torch.profiler, which sees every kernel of the process, ONNX Runtime's included).
"""
import argparse
import os
import sys


def arg_parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("programs", nargs="+", help="folders written by STIPPLE_DUMP_PATCH")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--levels", action="store_true",
                    help="also each graph optimization level (basic, none): which copies the optimizer adds")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402  (first: its CUDA libraries are the ones ONNX Runtime loads too)
import onnxruntime as ort  # noqa: E402
from ort_timing import timed  # noqa: E402

# PATCH_PROFILE_DEVICE=cpu tries the script itself on a machine without a GPU.
DEV = os.environ.get("PATCH_PROFILE_DEVICE", "cuda")
NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def session(path, graph, optimized=None, level=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if level is not None:
        so.graph_optimization_level = level
    if optimized:
        so.optimized_model_filepath = optimized
    prov = [("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1" if graph else "0"})]
    if DEV == "cpu":
        if graph:
            return None
        prov = ["CPUExecutionProvider"]
    return ort.InferenceSession(path, so, providers=prov)


def bind(sess, rng):
    io = sess.io_binding()
    keep = []
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        v = rng.standard_normal(shape).astype(NP[i.type]) * (0.5 if i.name == "strengths" else 0.05)
        o = ort.OrtValue.ortvalue_from_numpy(v, DEV, 0)
        keep.append(o)
        io.bind_ortvalue_input(i.name, o)
    for o in sess.get_outputs():
        v = ort.OrtValue.ortvalue_from_shape_and_type(o.shape, NP[o.type], DEV, 0)
        keep.append(v)
        io.bind_ortvalue_output(o.name, v)
    return io, keep


def profile(sess, io, top):
    from torch.profiler import ProfilerActivity, profile as tprofile

    if DEV != "cuda":
        return

    with tprofile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(3):
            sess.run_with_iobinding(io)
        io.synchronize_outputs()
        if DEV == "cuda":
            torch.cuda.synchronize()
    import json
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        p.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    sizes = {}
    for ev in trace.get("traceEvents", []):
        if ev.get("cat") == "gpu_memcpy":
            k = (ev.get("name", "")[:40], ev.get("args", {}).get("bytes"))
            sizes[k] = sizes.get(k, 0) + 1
    for (name, b), n in sorted(sizes.items(), key=lambda kv: -(kv[0][1] or 0))[:8]:
        print(f"  copy {name}: {b} bytes x{n / 3:g}")
    rows = {}
    for e in p.events():
        if e.device_type.name != "CUDA":
            continue
        r = rows.setdefault(e.name[:90], [0, 0.0])
        r[0] += 1
        r[1] += e.device_time / 1e3
    total = sum(v[1] for v in rows.values()) / 3
    count = sum(v[0] for v in rows.values()) // 3
    print(f"  GPU busy per run: {total:.3f} ms in {count} kernels/copies")
    for name, (n, ms) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {ms / 3:8.3f} ms {n // 3:5d}x  {name}")


def copies(path):
    """The copies between host and device ONNX Runtime put into the program, and what they copy."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    made = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type.startswith("Memcpy"):
            x = n.input[0]
            src = made.get(x)
            what = f"initializer {inits[x]}" if x in inits else (f"{src.op_type} {src.name}" if src else "input")
            print(f"  {n.op_type}: {x} ({what}) -> {', '.join(c.op_type for c in m.graph.node if n.output[0] in c.input)}")


def main():
    a = arg_parser().parse_args()
    rng = np.random.default_rng(0)
    for d in a.programs:
        path = os.path.join(d, "program.onnx")
        ops = {}
        import onnx

        m = onnx.load(path, load_external_data=False)
        for n in m.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        outs = len(m.graph.output)
        print(f"{d}: {len(m.graph.node)} nodes, {outs} weights written; ops {dict(sorted(ops.items()))}")
        opt = os.path.join(d, "optimized.onnx")
        s = session(path, False, opt)
        copies(opt)
        io, keep = bind(s, rng)
        print(f"  launch by launch: {timed(s, io, a.runs):.3f} ms per run")
        profile(s, io, a.top)
        del io, keep, s
        if a.levels:
            for name, level in (("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                                ("none", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
                opt = os.path.join(d, f"optimized-{name}.onnx")
                s = session(path, False, opt, level)
                print(f"  optimization {name}:")
                copies(opt)
                io, keep = bind(s, rng)
                print(f"  launch by launch: {timed(s, io, a.runs):.3f} ms per run")
                profile(s, io, 4)
                del io, keep, s
        g = session(path, True)
        if g is None:
            continue
        io, keep = bind(g, rng)
        print(f"  CUDA graph:       {timed(g, io, a.runs):.3f} ms per run")
        del io, keep, g
        sys.stdout.flush()


if __name__ == "__main__":
    main()
