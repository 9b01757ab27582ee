"""diffusers → LDM (`input_blocks.N.M`) UNet parameter names, derived from the names themselves.

Used by lora_fixtures.py to write LDM-named kohya files; lora_fixtures checks this map against diffusers'
own single-file converter before using it. Levels, layers per block and which levels have attention
or resamplers are read off the parameter names, not assumed from SD1.5.
"""

import re

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
       "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
       "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet_inner(rest):
    head, _, tail = rest.partition(".")
    return RESNET.get(head, head) + ("." + tail if tail else "")


def diffusers_to_ldm_names(names):
    lpb = 1 + max(int(m.group(1)) for n in names if (m := re.match(r"down_blocks\.\d+\.resnets\.(\d+)\.", n)))
    up_attn = {int(m.group(1)) for n in names if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", n))}
    out = {}
    for n in names:
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", n):
            x, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            idx = 1 + x * (lpb + 1) + j
            out[n] = f"input_blocks.{idx}.0.{_resnet_inner(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", n):
            out[n] = f"input_blocks.{1 + int(m.group(1)) * (lpb + 1) + lpb}.0.op.{m.group(2)}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", n):
            out[n] = f"middle_block.{2 * int(m.group(1))}.{_resnet_inner(m.group(2))}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", n):
            out[n] = f"middle_block.1.{m.group(1)}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", n):
            x, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            idx = x * (lpb + 1) + j
            out[n] = f"output_blocks.{idx}.0.{_resnet_inner(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", n):
            x = int(m.group(1))
            out[n] = f"output_blocks.{x * (lpb + 1) + lpb}.{2 if x in up_attn else 1}.conv.{m.group(2)}"
        else:
            for k, v in TOP.items():
                if n.startswith(k + "."):
                    out[n] = v + n[len(k):]
                    break
            else:
                raise KeyError(n)
    return out
