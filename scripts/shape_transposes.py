#!/usr/bin/env python3
"""Drops the Transposes of ONNX Runtime's fused UNet graphs whose result is only ever measured.

ORT's NHWC fusions leave, after each fused conv, a Transpose back to NCHW whose only readers are Shape
nodes (the attention blocks read the batch, height and width of the NCHW tensor): a whole activation
is copied every step to learn four numbers. `drop(model)` makes each such Shape read the Transpose's
input and each Gather of a constant index from it take the permuted index, so the numbers stay the
same, and removes the Transposes nobody reads any more. A Shape with start/end attributes, or one
read by anything but constant-index Gathers, is left alone.

    python scripts/shape_transposes.py GRAPH.onnx[.gz] [OUT.onnx[.gz]]    # prints how many it dropped
"""
import gzip
import sys

import numpy as np
import onnx
from onnx import numpy_helper


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
    name = f"{gather.name or gather.output[0]}_permuted_index"
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    gather.input[1] = name


def drop(model):
    """Rewrites `model` in place; returns how many Transposes it removed."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    dropped = 0
    for t in [n for n in g.node if n.op_type == "Transpose"]:
        if t.output[0] in outputs:
            continue
        readers = _consumers(g).get(t.output[0], [])
        if not readers or any(r.op_type != "Shape" or r.attribute for r in readers):
            continue
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None)
        if perm is None:
            continue
        cons = _consumers(g)
        plan = []
        for shape in readers:
            for gather in cons.get(shape.output[0], []):
                idx = _constant_index(g, gather.input[1], inits) if gather.op_type == "Gather" else None
                axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
                if idx is None or axis != 0 or shape.output[0] in outputs:
                    plan = None
                    break
                plan.append((gather, np.vectorize(lambda i: perm[i % len(perm)])(idx)))
            if plan is None:
                break
        if plan is None:
            continue
        for gather, value in plan:
            _set_constant(g, gather, value)
        for shape in readers:
            shape.input[0] = t.input[0]
        g.node.remove(t)
        dropped += 1
    return dropped


def load(path):
    data = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    return onnx.ModelProto.FromString(data)


def save(model, path):
    data = model.SerializeToString()
    if path.endswith(".gz"):
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    m = load(sys.argv[1])
    n = drop(m)
    print(f"{sys.argv[1]}: {n} Transposes read only by Shape dropped")
    if len(sys.argv) == 3:
        save(m, sys.argv[2])
