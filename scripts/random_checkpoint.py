#!/usr/bin/env python3
"""Writes a full-size single-file checkpoint with random weights straight from the architecture (no ONNX
export, seconds on a GPU): what `stipple --model FILE` opens through its embedded templates, for speed
figures and the GPU check on families export_model.py --random does not make.

    python scripts/random_checkpoint.py sd15|sd15-inpaint|sd2|sdxl OUT.safetensors [--shapes DIR] [--device cuda]
    python scripts/random_checkpoint.py sd15 OUT.safetensors --folder DIR [--template sd15-fp32] --device cpu

Weights are drawn as tiny_configs.random_component draws them (the same generator as the exported random
models), named as released LDM checkpoints name them (ldm_names; SD2's OpenCLIP text encoder as
arch_fixtures writes it), F16. --shapes DIR also writes DIR/unet/weights.safetensors and
DIR/text_encoder/weights.safetensors under diffusers names, which scripts/synth_lora.py reads.
--folder DIR (SD1.5 only) also writes a stipple folder of the same F16 weights under diffusers names, with the
graphs and weight maps of the embedded template --template (default sd15-fp32, what the CPU opens the
single file with): the pair that compares a single file's load with a folder's (README, "Load time").
"""
import argparse
import os
import sys


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=["sd15", "sd15-inpaint", "sd2", "sdxl"])
    ap.add_argument("out")
    ap.add_argument("--shapes", help="also write the UNet's and text encoder's weights under diffusers names")
    ap.add_argument("--folder", help="also write a stipple folder of the same weights (sd15)")
    ap.add_argument("--template", default="sd15-fp32", help="the template whose graphs --folder uses")
    ap.add_argument("--device", default="cuda")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_configs  # noqa: E402
from ldm_names import cast, clip_to_ldm, ddpm_buffers, open_clip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402


def main():
    a = arg_parser().parse_args()
    fam = a.family
    with torch.no_grad():
        unet = tiny_configs.random_component(fam, "unet", a.device)
        state = dict(unet_to_ldm(unet))
        shapes = {"unet": unet.state_dict()}
        folder = {"unet": unet.state_dict()}
        del unet
        vae = tiny_configs.random_component(fam, "vae", a.device)
        state.update(vae_to_ldm(vae))
        folder["vae_decoder"] = folder["vae_encoder"] = vae.state_dict()
        del vae
        te = tiny_configs.random_component(fam, "text_encoder", a.device)
        shapes["text_encoder"] = folder["text_encoder"] = tiny_configs.text_encoder_state_dict(te)
        if fam == "sdxl":
            state.update(clip_to_ldm(te, "conditioner.embedders.0.transformer."))
            te2 = tiny_configs.random_component(fam, "text_encoder_2", a.device)
            state.update(open_clip_to_ldm(te2))
        elif fam == "sd2":
            from arch_fixtures import sd2_text_encoder

            state.update(sd2_text_encoder(te.cpu())[0])
        else:
            state.update(clip_to_ldm(te, "cond_stage_model.transformer."))
        if fam != "sdxl":
            state.update(ddpm_buffers(tiny_configs.random_scheduler(fam).config))
        state = {k: v.cpu() for k, v in cast(state, torch.float16).items()}
    save_file(state, a.out)
    print(f"wrote {a.out}: {len(state)} tensors")
    if a.shapes:
        for comp, s in shapes.items():
            os.makedirs(os.path.join(a.shapes, comp), exist_ok=True)
            save_file({k: v.half().cpu().contiguous() for k, v in s.items()},
                      os.path.join(a.shapes, comp, "weights.safetensors"))
    if a.folder:
        if fam != "sd15":
            raise SystemExit("--folder: sd15 only")
        write_folder(a.folder, a.template, folder)


def write_folder(out, template, states):
    """A stipple folder: the template's files (gunzipped), the CLIP tokenizer, and per component the
    F16 weights its weight map reads (diffusers names)."""
    import gzip
    import json
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "templates", template)
    for dirpath, _, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        os.makedirs(os.path.join(out, rel), exist_ok=True)
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                data = fh.read()
            if f.endswith(".gz"):
                data, f = gzip.decompress(data), f[:-3]
            with open(os.path.join(out, rel, f), "wb") as fh:
                fh.write(data)
    shutil.copytree(os.path.join(root, "tests", "fixtures", "tiny-sd15", "tokenizer"),
                    os.path.join(out, "tokenizer"), dirs_exist_ok=True)
    for comp, state in states.items():
        with open(os.path.join(out, comp, "weightmap.json")) as fh:
            wanted = {e["source"] for e in json.load(fh)["initializers"]}
        missing = wanted - set(state)
        if missing:
            raise SystemExit(f"{comp}: the template reads weights the modules lack: {sorted(missing)[:5]}")
        save_file({k: state[k].half().cpu().contiguous() for k in sorted(wanted)},
                  os.path.join(out, comp, "weights.safetensors"))
    print(f"wrote {out} (template {template})")


if __name__ == "__main__":
    main()
