"""An fp16 graph made fp32 throughout: its fp16 initializers, constants, casts and value types
become f32 (external initializers get new offsets in the same file layout order). Used by
scripts/unet_profile.py's `NAME32` graphs to time, say, the fused VAE decoder with f32
activations against the plain fp32 export.

    fp32(model) -> number of tensors changed
"""
import numpy as np
import onnx
from onnx import numpy_helper

F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT


def _tensor(t):
    if t.data_type != F16:
        return False
    if t.data_location == onnx.TensorProto.EXTERNAL:
        t.data_type = F32
        return True
    v = numpy_helper.to_array(t).astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(v, t.name))
    return True


def _value(v):
    tt = v.type.tensor_type
    if tt.elem_type == F16:
        tt.elem_type = F32
        return True
    return False


def fp32(m):
    n = 0
    g = m.graph
    for t in g.initializer:
        n += _tensor(t)
    # External data: lengths double for the converted ones; lay them out again in order.
    off = 0
    for t in g.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e for e in t.external_data}
        count = int(np.prod(t.dims)) if len(t.dims) else 1
        length = count * (4 if t.data_type == F32 else int(ext["length"].value) // max(count, 1))
        ext["offset"].value = str(off) if "offset" in ext else ext["offset"].value
        if "offset" not in ext:
            e = t.external_data.add()
            e.key, e.value = "offset", str(off)
        ext["length"].value = str(length)
        off += (length + 63) // 64 * 64
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                n += _tensor(a.t)
            if node.op_type == "Cast" and a.name == "to" and a.i == F16:
                a.i = F32
                n += 1
    for v in list(g.value_info) + list(g.input) + list(g.output):
        n += _value(v)
    return n
