#!/usr/bin/env python3
"""Textual-inversion fixtures and diffusers' references for them.

    /work/venv/bin/python scripts/embedding_fixtures.py     # (a venv with torch, diffusers, safetensors)

Writes, from seeded random vectors the width of the tiny models' text encoders (32):
  tests/fixtures/embeddings/
    stippleneg.safetensors     SD 1.x, A1111's format: `emb_params` [2, 32] F32
    stipplestyle.safetensors   SD 1.x, one vector stored 1-D under `emb_params` [32]
    stipplemulti.safetensors   SD 1.x, 5 vectors under A1111's `string_to_param.*` key, F16
    stipplexl.safetensors      SDXL: `clip_l` [2, 32] + `clip_g` [2, 32]
    reference/sd15.json, sdxl.json     per case: prompt, the embeddings in the order diffusers loaded
                                       them, diffusers' padded token ids (per tokenizer), and the
                                       tensor names of its prompt embeddings in <family>.safetensors;
                                       one image per family (file, prompt, negative, steps, sampler)
    reference/sd15.safetensors, sdxl.safetensors, *.png
  tests/fixtures/embeddings-bad/       files stipple must refuse: an SD 2.x-wide (1024) vector, a
                                       pickle `.pt`, a truncated file, a file of LoRA-like keys, NaNs

The references are diffusers' own: `load_textual_inversion` (which adds tokens `name`, `name_1`, ...
with new ids after the vocabulary and extends the token-embedding table) and the pipelines'
`encode_prompt` / `__call__` on the tiny models rebuilt as `export_model.py --tiny` builds them
(checked against the fixtures' weights first). Each case loads its embeddings into fresh copies of
the text encoders in the order they first appear in the prompt, as stipple numbers them.
diffusers applies no A1111 emphasis, so the emphasis case's reference is diffusers' plain prompt
embeddings with A1111's rule applied here (the embedding's rows times the weight, then the chunk's
original mean restored).
"""
import copy
import json
import os
import struct

import torch
from safetensors.torch import load_file, save_file

import diffusers_reference as ref
from model_folder import ROOT, tiny_models
from onnx_export import component_params

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIXTURES, "embeddings")
BAD = os.path.join(FIXTURES, "embeddings-bad")
WIDTH = 32
SEED = 1234
STEPS = 4

SD15_CASES = [
    # (slug, prompt, negative, emphasis: (name, weight) applied on diffusers' plain prompt)
    ("alone", "a photo of stippleneg", None, None),
    ("two", "stipplestyle fox, stippleneg", None, None),
    ("multi", "a stipplemulti cat", None, None),
    ("negative", "a red fox", "stippleneg, blurry", None),
    ("emphasis", "a (stippleneg:1.3) fox", None, ("a stippleneg fox", "stippleneg", 1.3)),
]
SDXL_CASES = [
    ("alone", "a photo of stipplexl", None, None),
    ("negative", "a red fox", "stipplexl, blurry", None),
]
SD15_IMAGE = ("a stipplestyle fox in the snow", "stippleneg, blurry")
SDXL_IMAGE = ("a stipplexl fox in the snow", "blurry")


def check_text_encoder(fixture, component, module):
    stored = load_file(os.path.join(fixture, component, "weights.safetensors"))
    for name, p in component_params(component, module).items():
        if not torch.equal(p.detach().to(stored[name].dtype), stored[name]):
            raise SystemExit(f"{fixture}: rebuilt {component} {name} differs from the fixture")


def vectors(gen, n, scale):
    return torch.randn(n, WIDTH, generator=gen) * scale


def write_embeddings(te_scale):
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(SEED)
    emb = {
        "stippleneg": vectors(g, 2, te_scale),
        "stipplestyle": vectors(g, 1, te_scale),
        "stipplemulti": vectors(g, 5, te_scale).half().float(),
    }
    xl = {"clip_l": vectors(g, 2, te_scale), "clip_g": vectors(g, 2, te_scale)}
    save_file({"emb_params": emb["stippleneg"]}, os.path.join(OUT, "stippleneg.safetensors"))
    save_file({"emb_params": emb["stipplestyle"][0].contiguous()},
              os.path.join(OUT, "stipplestyle.safetensors"))
    save_file({"string_to_param.*": emb["stipplemulti"].half()},
              os.path.join(OUT, "stipplemulti.safetensors"))
    save_file(xl, os.path.join(OUT, "stipplexl.safetensors"))
    return emb, xl


def write_bad():
    os.makedirs(BAD, exist_ok=True)
    save_file({"emb_params": torch.ones(1, 1024)}, os.path.join(BAD, "sd2style.safetensors"))
    # A pickle of an empty dict: stipple must refuse it by its name and bytes, never load it.
    with open(os.path.join(BAD, "oldstyle.pt"), "wb") as f:
        f.write(b"\x80\x02}q\x00.")
    full = os.path.join(BAD, "truncated.safetensors")
    save_file({"emb_params": torch.ones(4, WIDTH)}, full)
    with open(full, "rb") as f:
        data = f.read()
    with open(full, "wb") as f:
        f.write(data[: len(data) - 100])
    save_file({"lora_te_a.lora_down.weight": torch.ones(2, WIDTH), "lora_te_a.lora_up.weight": torch.ones(WIDTH, 2),
               "lora_te_a.alpha": torch.ones(())}, os.path.join(BAD, "lorafile.safetensors"))
    nan = torch.zeros(1, WIDTH)
    nan[0, 3] = float("nan")
    save_file({"emb_params": nan}, os.path.join(BAD, "nanvec.safetensors"))
    # A header length far past the end.
    with open(os.path.join(BAD, "hugeheader.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", 1 << 40) + b"{}")


def names_in_order(*texts):
    """Embedding names in order of first appearance across `texts` (the way stipple numbers rows)."""
    names = ["stipplemulti", "stippleneg", "stipplestyle", "stipplexl"]
    found = []
    for t in texts:
        if t is None:
            continue
        hits = sorted((t.find(n), n) for n in names if n in t)
        found += [n for _, n in hits if n not in found]
    return found


def a1111_emphasis(z, ids, first_extra, weight):
    """A1111's rule on one chunk [77, d]: rows whose id is an embedding id scaled, mean restored."""
    mult = torch.ones(z.shape[0])
    mult[torch.tensor(ids) >= first_extra] = weight
    before = z.mean()
    z = z * mult[:, None]
    return z * (before / z.mean())


def sd15(unet, te, vae, sched, tok, emb):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    def pipe_with(names, text_encoder=None, tokenizer=None):
        p = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder or copy.deepcopy(te),
                                    tokenizer=tokenizer or copy.deepcopy(tok), unet=unet,
                                    scheduler=EulerDiscreteScheduler.from_config(sched.config),
                                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        for n in names:
            p.load_textual_inversion(emb[n], token=n)
        return p

    cases, tensors = [], {}
    for slug, prompt, negative, emphasis in SD15_CASES:
        text = emphasis[0] if emphasis else prompt
        order = names_in_order(text, negative)
        p = pipe_with(order)
        with torch.no_grad():
            which = negative if negative is not None else text
            converted = p.maybe_convert_prompt(which, p.tokenizer)
            ids = p.tokenizer(converted, padding="max_length", max_length=77, truncation=True).input_ids
            if negative is not None:
                _, z = p.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
            else:
                z, _ = p.encode_prompt(text, "cpu", 1, False)
        z = z[0]
        if emphasis:
            z = a1111_emphasis(z, ids, len(tok), emphasis[2])
        tensors[f"{slug}.embeds"] = z.contiguous()
        cases.append({"slug": slug, "prompt": prompt, "negative": negative or "", "order": order,
                      "ids": ids, "embeds": f"{slug}.embeds", "encoded": "negative" if negative else "prompt",
                      "vocab": len(tok)})
    write_family("sd15", pipe_with, SD15_IMAGE, cases, tensors)


def sdxl(unet, te1, te2, vae, sched, tok1, tok2, xl):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    def pipe_with(names):
        p = StableDiffusionXLPipeline(vae=vae, text_encoder=copy.deepcopy(te1), text_encoder_2=copy.deepcopy(te2),
                                      tokenizer=copy.deepcopy(tok1), tokenizer_2=copy.deepcopy(tok2), unet=unet,
                                      scheduler=EulerDiscreteScheduler.from_config(sched.config),
                                      add_watermarker=False)
        p.set_progress_bar_config(disable=True)
        for n in names:
            p.load_textual_inversion(xl["clip_l"], token=n, text_encoder=p.text_encoder, tokenizer=p.tokenizer)
            p.load_textual_inversion(xl["clip_g"], token=n, text_encoder=p.text_encoder_2,
                                     tokenizer=p.tokenizer_2)
        return p

    cases, tensors = [], {}
    for slug, prompt, negative, _ in SDXL_CASES:
        order = names_in_order(prompt, negative)
        p = pipe_with(order)
        which = negative if negative is not None else prompt
        ids = []
        for t in (p.tokenizer, p.tokenizer_2):
            converted = p.maybe_convert_prompt(which, t)
            ids.append(t(converted, padding="max_length", max_length=77, truncation=True).input_ids)
        with torch.no_grad():
            z, nz, pooled, npooled = p.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=True,
                                                     negative_prompt=negative or "")
        if negative is not None:
            z, pooled = nz, npooled
        tensors[f"{slug}.embeds"] = z[0].contiguous()
        tensors[f"{slug}.pooled"] = pooled[0].contiguous()
        cases.append({"slug": slug, "prompt": prompt, "negative": negative or "", "order": order,
                      "ids": ids[0], "ids_2": ids[1], "embeds": f"{slug}.embeds", "pooled": f"{slug}.pooled",
                      "encoded": "negative" if negative else "prompt", "vocab": len(tok1)})
    write_family("sdxl", pipe_with, SDXL_IMAGE, cases, tensors)


def write_family(family, pipe_with, image_case, cases, tensors):
    """The family's image (Euler, STEPS steps, 64x64) with the embeddings its prompts use, the case
    tensors and <family>.json."""
    prompt, negative = image_case
    p = pipe_with(names_in_order(prompt, negative))
    img = run(p, prompt, negative)
    name = f"{family}.euler.{STEPS}.png"
    img.save(os.path.join(OUT, "reference", name))
    save_file(tensors, os.path.join(OUT, "reference", f"{family}.safetensors"))
    image = {"file": name, "prompt": prompt, "negative": negative, "steps": STEPS,
             "sampler": "euler", "seed": ref.IMAGE_SEED, "cfg": 7.0, "width": 64, "height": 64}
    with open(os.path.join(OUT, "reference", f"{family}.json"), "w") as f:
        json.dump({"cases": cases, "image": image, "made_with": made_with()}, f, indent=1)


def run(pipe, prompt, negative):
    g = torch.Generator("cpu").manual_seed(ref.IMAGE_SEED)
    with torch.no_grad():
        return pipe(prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=7.0,
                    generator=g, height=64, width=64).images[0]


def made_with():
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def main():
    from transformers import CLIPTokenizer

    os.makedirs(os.path.join(OUT, "reference"), exist_ok=True)
    sd15_dir = os.path.join(FIXTURES, "tiny-sd15")
    unet, (te,), vae, sched = tiny_models("sd1")
    check_text_encoder(sd15_dir, "text_encoder", te)
    scale = te.get_input_embeddings().weight.std().item()
    emb, xl = write_embeddings(scale)
    write_bad()
    tok = CLIPTokenizer.from_pretrained(os.path.join(sd15_dir, "tokenizer"))
    sd15(unet, te, vae, sched, tok, emb)

    sdxl_dir = os.path.join(FIXTURES, "tiny-sdxl")
    unet, (te1, te2), vae, sched = tiny_models("sdxl")
    check_text_encoder(sdxl_dir, "text_encoder", te1)
    check_text_encoder(sdxl_dir, "text_encoder_2", te2)
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(sdxl_dir, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(sdxl_dir, "tokenizer_2"))
    sdxl(unet, te1, te2, vae, sched, tok1, tok2, xl)
    print("wrote", OUT, "and", BAD)


if __name__ == "__main__":
    main()
