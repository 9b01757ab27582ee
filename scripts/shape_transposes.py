#!/usr/bin/env python3
"""Removes the Transposes ONNX Runtime's NHWC fusions leave between NHWC operators of a fused UNet.

The fusions make every conv and GroupNorm channels-last (NhwcConv, GroupNorm, SkipGroupNorm) but leave
what lies between them in NCHW: a Transpose back after each of them, read by the residual Adds, the
up blocks' skip Concats, and Shape nodes (the attention blocks read the batch, height and width), and a
Transpose forward again before the next NHWC operator. In the SD1.5 graph that is 95 Transposes, each
copying a whole activation every step.

`drop(model)` makes each Shape of a Transpose (read only by constant-index Gathers) measure the
Transpose's input with the index permuted, and removes Transposes nobody reads. `sink(model)` also
moves a Transpose of one perm from both inputs of an Add, or every input of a Concat (its axis
permuted), to the output, and cancels a Transpose followed by its inverse, until nothing changes: the
SD1.5 graph keeps 8 (the input's, the output's and the three upsamplers' Resizes, which stay NCHW).
Every value the graph computes is the same, element for element; only where it sits in memory moves
(`--self-test` checks both rules on a graph of standard operators on the CPU; on a GPU,
`scripts/unet_profile.py`'s `cuda-layout` graph is the shipped fused graph after `sink`, its output
compared with the shipped one's).

Not applied to the shipped templates: neither its speed nor the GPU check has been run on it, and
ONNX Runtime's own transpose optimizer most likely does the same when it builds the session: on the
self-test's graph (static shapes, CPU) it removes every Transpose already at the basic optimization
level, the Shape's included. `unet_profile.py` prints how many Transposes are left after ONNX
Runtime's passes on the fused graph; unless it finds some, this script gains nothing.

    python scripts/shape_transposes.py templates/sd15-fp16 tests/fixtures/tiny-sd15 ...   # in place
    python scripts/shape_transposes.py --self-test --dry-run templates/sd15-fp16   # check, count
"""
import numpy as np
import onnx
from onnx import numpy_helper

import fused_time


def _consumers(graph):
    out = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _constant_index(graph, name, inits):
    """The scalar or 1-D int value of `name` when it is an initializer or a Constant node's output."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _set_constant(graph, gather, value):
    name = _fresh(graph, f"{gather.name or gather.output[0]}_permuted_index")
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    gather.input[1] = name


def drop(model):
    """Makes every Shape of a Transpose (read only by constant-index Gathers) measure the Transpose's
    input instead, and removes the Transposes nobody reads any more. Rewrites `model` in place;
    returns how many Transposes it removed."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    dropped = 0
    for t in [n for n in g.node if n.op_type == "Transpose"]:
        perm = _perm(t)
        if t.output[0] in outputs or perm is None:
            continue
        cons = _consumers(g)
        for shape in cons.get(t.output[0], []):
            if shape.op_type != "Shape" or shape.attribute or shape.output[0] in outputs:
                continue
            plan = []
            for gather in cons.get(shape.output[0], []):
                idx = _constant_index(g, gather.input[1], inits) if gather.op_type == "Gather" else None
                axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
                if idx is None or axis != 0:
                    plan = None
                    break
                plan.append((gather, np.vectorize(lambda i: perm[i % len(perm)])(idx)))
            if plan is None:
                continue
            for gather, value in plan:
                _set_constant(g, gather, value)
            shape.input[0] = t.input[0]
        if not _consumers(g).get(t.output[0]):
            g.node.remove(t)
            dropped += 1
    return dropped


def _perm(node):
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _fresh(graph, base):
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return name


def sink(model):
    """Moves Transposes of the same perm from both inputs of an Add or every input of a Concat to its
    output, and cancels a Transpose of a Transpose that undoes it, until nothing changes: ORT's NHWC
    fusions leave the up blocks' residual adds and skip concats in NCHW between NHWC operators.
    A move is made only when it frees at least one input Transpose, so the count never grows.
    Returns the number of Transposes removed (shape-only ones included)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    before = sum(n.op_type == "Transpose" for n in g.node)
    changed = True
    while changed:
        changed = False
        drop(model)
        made = {o: n for n in g.node for o in n.output}
        cons = _consumers(g)
        for n in list(g.node):
            if n.op_type == "Transpose":
                src = made.get(n.input[0])
                p, q = (_perm(src) if src is not None and src.op_type == "Transpose" else None), _perm(n)
                if p and q and len(p) == len(q) and all(p[q[i]] == i for i in range(len(q))) \
                        and n.output[0] not in outputs:
                    for c in cons.get(n.output[0], []):
                        for k, i in enumerate(c.input):
                            if i == n.output[0]:
                                c.input[k] = src.input[0]
                    g.node.remove(n)
                    changed = True
                    break
            if n.op_type not in ("Add", "Concat") or n.output[0] in outputs:
                continue
            srcs = [made.get(i) for i in n.input]
            if not srcs or any(s is None or s.op_type != "Transpose" for s in srcs):
                continue
            perms = [_perm(s) for s in srcs]
            if perms[0] is None or any(q != perms[0] for q in perms):
                continue
            if not any(len(cons.get(s.output[0], [])) == 1 for s in srcs):
                continue
            perm = perms[0]
            inner = _fresh(g, n.output[0] + "_sunk")
            at = list(g.node).index(n)
            for k, s in enumerate(srcs):
                n.input[k] = s.input[0]
            if n.op_type == "Concat":
                for a in n.attribute:
                    if a.name == "axis":
                        a.i = perm[a.i % len(perm)]
            out = n.output[0]
            n.output[0] = inner
            t = onnx.helper.make_node("Transpose", [inner], [out], name=_fresh(g, inner + "_t"), perm=perm)
            g.node.insert(at + 1, t)
            changed = True
            break
        # Transposes nobody reads any more.
        cons = _consumers(g)
        for n in [n for n in g.node if n.op_type == "Transpose"]:
            if not cons.get(n.output[0]) and n.output[0] not in outputs:
                g.node.remove(n)
    return before - sum(n.op_type == "Transpose" for n in g.node)



def self_test():
    """Both rules on a small graph of standard operators, run by ONNX Runtime on the CPU before and
    after: NHWC inputs transposed to NCHW, added, concatenated, measured and transposed back."""
    import onnxruntime as ort
    from onnx import TensorProto, helper as h

    vi = lambda n, s: h.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    nodes = [h.make_node("Transpose", [x], ["t" + x], perm=[0, 3, 1, 2]) for x in "xyz"]
    nodes += [h.make_node("Add", ["tx", "ty"], ["a"]),
              h.make_node("Concat", ["a", "tz"], ["c"], axis=1),
              h.make_node("Transpose", ["c"], ["out"], perm=[0, 2, 3, 1]),
              h.make_node("Transpose", ["c"], ["back"], perm=[0, 2, 3, 1]),
              h.make_node("Relu", ["back"], ["out2"]),
              h.make_node("Shape", ["tz"], ["sh"]),
              h.make_node("Gather", ["sh", "i"], ["g"], axis=0),
              h.make_node("Add", ["a", "a"], ["nchw"])]
    graph = h.make_graph(nodes, "t", [vi("x", [2, 5, 6, 3]), vi("y", [2, 5, 6, 3]), vi("z", [2, 5, 6, 4])],
                         [vi("out", [2, 5, 6, 7]), vi("out2", [2, 5, 6, 7]),
                          h.make_tensor_value_info("g", TensorProto.INT64, []), vi("nchw", [2, 3, 5, 6])],
                         [numpy_helper.from_array(np.array(2, dtype=np.int64), "i")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in (("x", [2, 5, 6, 3]), ("y", [2, 5, 6, 3]), ("z", [2, 5, 6, 4]))}

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    before = run(model)
    sunk = onnx.ModelProto()
    sunk.CopyFrom(model)
    removed = sink(sunk)
    onnx.checker.check_model(sunk)
    same = all(np.array_equal(a, b) for a, b in zip(before, run(sunk)))
    print(f"self-test: {removed} Transposes removed, outputs {'equal' if same else 'DIFFER'}")
    return same and removed == 2


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="model folders, template folders or fused graphs")
    ap.add_argument("--dry-run", action="store_true", help="print what would go; write nothing")
    ap.add_argument("--self-test", action="store_true", help="check both rules on a CPU graph first")
    args = ap.parse_args()
    if args.self_test and not self_test():
        raise SystemExit("self-test failed")
    for arg in args.paths:
        path = fused_time._graph_path(arg)
        model = fused_time.load(path)
        before = sum(n.op_type == "Transpose" for n in model.graph.node)
        n = sink(model)
        if n and not args.dry_run:
            fused_time.save(model, path)
        print(f"{path}: {n} of {before} Transposes removed")


if __name__ == "__main__":
    main()
