#!/usr/bin/env python3
"""Full-size single-file check (a developer tool; no test runs it): the full-size SD1.5, SD 2.x or SDXL architecture
with random weights, written as an LDM single-file checkpoint in F16, read back through diffusers' converters and
rendered; with --stipple, the same job rendered by stipple from the same file and the two PNGs compared.

    /usr/bin/time -v /work/venv/bin/python scripts/full_size_check.py --family sd15 --out /tmp/fullsize
    /work/venv/bin/python scripts/full_size_check.py --family sd2 --out /tmp/fullsize --build fp16 \
        --stipple target/release/stipple      # ... then prints "sd2: ... mean abs 0.0002/255, max 1/255 -> PASS"

Families: sd15 (SD1.5), sd2 (SD 2.x, the 2.x-base config: epsilon), sd2v (the same architecture with a v-prediction
scheduler, as 2.x-768; rendered at 64x64 too), sdxl (SDXL base). The file is read back with the converter functions
diffusers' from_single_file calls (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
convert_ldm_clip_checkpoint, convert_open_clip_checkpoint) on the modules' configs, every tensor checked bit for bit,
rather than from_single_file itself: that needs a config folder or the Hub.

--stipple BIN: the diffusers part runs in a child process (its memory is given back before stipple starts), then
`BIN generate --model FILE --device cpu` (cuda:0 with --device cuda) with the same prompt, negative, seed, cfg,
sampler, steps and size (stipple draws the initial latents with torch's CPU generator, as the pipeline does); the
result is printed and written to DIR/<family>-random.compare.json; exit status 1 when the mean abs difference is over
1/255 (--device cuda: the rule in the GPU section below).
Measured (2026-12-06, 2 cores, 24 GB): sd15 and sd2 mean 0.0002/255, sd2v 0.0001/255, max 1/255 each (stipple
38-44 s, peak RSS 10.4, 12.1 and 12.2 GB, with the weights handed to ONNX Runtime in memory; since they are staged on
disk, SD1.5 peaks at 4.3 GB). SDXL: the diffusers part runs (--build fp16 --fp32-weights mmap, 15.4 GB peak RSS);
stipple's CPU fp32 load was killed by the kernel at 24.3 GB anonymous memory (13.9 GB of fp32 weights) before the weights
were staged on disk, and now peaks at 15.3 GB: mean abs 0.0003/255, max 1/255 -> PASS (stipple 154 s).

Steps (--device cpu, the default):
  1. tiny_configs.build_sd15_random / build_sdxl_random (fp32), then each module cast to fp16 in place: the values
     the file will hold (half the memory from here on);
  2. DIR/<family>-random.safetensors written by single_file_fixtures' config-driven writer (sd1_checkpoint with the
     DDPM buffers, or sdxl_checkpoint), F16;
  3. the file read back and every component put through diffusers' own converter (single_file_fixtures.
     convert_component, as the fixture script verifies): every tensor must come back, bit for bit;
  4. each module's weights replaced, tensor by tensor, by the read-back tensors in float32 (the built values are
     freed as it goes, so the fp16 and fp32 copies of a model never coexist);
  5. the diffusers pipeline (StableDiffusionPipeline / StableDiffusionXLPipeline) in float32 on the CPU renders
     DIR/<family>-random.euler.4.png with export_model.reference_image: "a red fox in the snow", negative "blurry",
     seed 42, cfg 7, Euler 4 steps (EulerDiscreteScheduler.from_config of the model's scheduler), 64x64 for SD1.5,
     128x128 for SDXL. The settings (and what was verified, timings, peak RSS) are printed as one JSON line and
     written to DIR/<family>-random.json.

    /usr/bin/time -v /work/venv/bin/python scripts/full_size_check.py --family sdxl --out /tmp/fullsize \
        --build fp16 --fp32-weights mmap       # SDXL on a shared 24 GB machine

On the GPU (--device cuda; issue #16's figures for fp16 on the GPU). On the GPU machine (python3 with torch + CUDA;
scripts/gpu_env.sh unpacks ONNX Runtime GPU for stipple and makes the diffusers wheel in .whl/ importable), one
command per family (the model is built, written and verified on the CPU first, as above):

    . scripts/gpu_env.sh
    python3 scripts/full_size_check.py --family sd15 --device cuda --build fp16 --out /tmp/fullsize \\
        --stipple target/release/stipple
    python3 scripts/full_size_check.py --family sd2 --device cuda --build fp16 --out /tmp/fullsize \\
        --stipple target/release/stipple
    python3 scripts/full_size_check.py --family sd2v --device cuda --build fp16 --out /tmp/fullsize \\
        --stipple target/release/stipple
    python3 scripts/full_size_check.py --family sdxl --device cuda --build fp16 --out /tmp/fullsize \\
        --stipple target/release/stipple

What it does: the same file as the CPU path (the modules are still built on the CPU: randomize_ draws from a
generator on the module's device, and CUDA's generator gives other numbers, which would make another file), the same
bit-for-bit read-back through diffusers' converters; then the read-back modules go to the GPU in float16 and the
pipeline renders DIR/<family>-random.cuda.euler.20.fp16.png, the same modules are converted to float32 in place (one
copy of the weights on the GPU at a time) and render DIR/<family>-random.cuda.euler.20.fp32.png. The family's native
size (512x512 SD1.5 and sd2, 768x768 sd2v, 1024x1024 SDXL), Euler 20 steps, the prompt, negative, seed and cfg above.
Both renders start from the same latents, drawn in float32 by torch.Generator('cpu').manual_seed(42) as the fp32
pipeline and stipple draw them, then cast and moved to the GPU (a fp16 pipeline drawing them itself would draw in
fp16 on the CPU: other numbers). SDXL's VAE overflows in fp16: in the fp16 render the VAE decodes in float32, as
StableDiffusionXLPipeline does by itself for a VAE whose config has force_upcast (SDXL's has); SD1.5/SD2's fp16
renders decode in fp16. DIR/<family>-random.cuda.json records which image is which (its "renders": modules' dtype,
VAE dtype, device, finiteness, seconds, peak GPU memory), size, steps, torch/diffusers/CUDA versions and the GPU.
Then `stipple generate --model FILE --device cuda:0` (plus --stipple-arg extras) renders the same job, and one line
gives mean and max abs difference (in 1/255) of stipple vs diffusers fp32, stipple vs diffusers fp16, and diffusers
fp16 vs fp32 (fp16's own noise floor), also in DIR/<family>-random.cuda.compare.json.
Verdict (cuda): PASS when stipple vs diffusers fp32 has mean <= 1/255, OR mean <= 1.5 x the diffusers fp16-vs-fp32
mean (stipple computes in fp16 on the GPU, so it may differ from fp32 as much as diffusers' own fp16 does; the second
rule only counts when diffusers' fp16 image is finite); exit status 1 otherwise. The CPU verdict is unchanged.
FULL_SIZE_CHECK_FAKE_CUDA=1 (a developer's switch, no figures): --device cuda runs on the CPU at the CPU path's size
and 2 steps, stipple with --device cpu, so the cuda branch can be exercised without a GPU.

Memory (2 CPU cores): the default path holds the fp32 models in process memory: SD1.5 peaks at 6.7 GB RSS (3.5 min);
SDXL would need over 14 GB of process memory. Two flags bring SDXL within a shared 24 GB machine, with the same file
and the same arithmetic (SDXL: 7.4 GB of process memory at most, 15.4 GB peak RSS counting the mapped weights, 8 min):
  --build fp16          build_*_random(dtype=float16): the modules are built in fp16 directly (randomize_ draws the
                        same fp32 noise and rounds it when storing, as .half() of the fp32 build does: for SD1.5 the
                        written file is byte-identical either way);
  --fp32-weights mmap   each component's read-back weights are streamed in float32, one tensor at a time, to a scratch
                        file DIR/<family>-random.fp32.<component>.safetensors and the modules take them memory-mapped
                        (safetensors' load_file maps, it does not copy): the fp32 weights are page cache the kernel can
                        drop and re-read, not process memory. The scratch files are deleted at the end.
"""

import argparse
import json
import os
import resource
import struct
import sys
import time


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["sd15", "sd2", "sd2v", "sdxl"], required=True)
    ap.add_argument("--out", required=True, help="output folder (not part of the repository)")
    ap.add_argument("--build", choices=["fp32", "fp16"], default="fp32",
                    help="dtype the random modules are built in (fp16: same file, half the memory)")
    ap.add_argument("--fp32-weights", choices=["memory", "mmap"], default="memory",
                    help="where the pipeline's float32 weights live (mmap: a memory-mapped scratch file)")
    ap.add_argument("--stipple", metavar="BIN",
                    help="then render the same job with this stipple binary from the same file and compare the PNGs "
                         "(the diffusers part runs in a child process first: the two models never share memory)")
    ap.add_argument("--stipple-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for `stipple generate` (repeatable; --stipple-arg=--threads=2)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the diffusers renders (fp16 and fp32) and stipple's on the GPU, at the family's native "
                         "size, 20 steps (see the docstring's GPU section)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --stipple: keep DIR's checkpoint and diffusers image(s) from an earlier run of the same "
                         "--device")
    return ap


SAMPLER, STEPS, CFG = "euler", 4, 7.0
SIZE = {"sd15": 64, "sd2": 64, "sd2v": 64, "sdxl": 128}
# Random weights give SD2's one-step prediction test no meaning: sd2 is the 2.x-base config (epsilon), sd2v the same
# architecture as a 768-v model (v-prediction scheduler); stipple is told which, as for a file without metadata.
STIPPLE_ARGS = {"sd2": ["--prediction", "epsilon"], "sd2v": ["--prediction", "v"]}


# --device cuda: the family's native size, 20 steps. FULL_SIZE_CHECK_FAKE_CUDA=1 (a developer's switch, not for
# figures) runs the cuda branch on the CPU at the CPU path's size and 2 steps, so the branch has run before a GPU does.
NATIVE_SIZE = {"sd15": 512, "sd2": 512, "sd2v": 768, "sdxl": 1024}
CUDA_STEPS = 20
FAKE_CUDA = os.environ.get("FULL_SIZE_CHECK_FAKE_CUDA") == "1"


def plan(family, device):
    """Every device and dtype decision, in one place. The modules are always built on the CPU: randomize_ draws from
    a generator on the module's device, and CUDA's generator gives other numbers than the CPU's, so a cuda build
    would write another file. `renders`: the dtypes the diffusers pipeline renders in, in that order (cuda: fp16
    first, then the same modules converted to fp32 in place: one copy of the weights on the GPU at a time)."""
    if device == "cpu":
        return {"device": "cpu", "torch_device": "cpu", "size": SIZE[family], "steps": STEPS,
                "renders": ["float32"], "stipple_device": "cpu", "tag": ""}
    return {"device": "cuda", "torch_device": "cpu" if FAKE_CUDA else "cuda",
            "size": SIZE[family] if FAKE_CUDA else NATIVE_SIZE[family], "steps": 2 if FAKE_CUDA else CUDA_STEPS,
            "renders": ["float16", "float32"], "stipple_device": "cpu" if FAKE_CUDA else "cuda:0", "tag": ".cuda",
            "fake": FAKE_CUDA}


def paths(out, family, p=None):
    """(stem, checkpoint, {render dtype: png}, settings json, compare json, stipple's folder). The checkpoint is
    shared by both devices (the same file); everything else of --device cuda has `.cuda` in its name."""
    p = p or plan(family, "cpu")
    stem = os.path.join(out, f"{family}-random")
    if p["device"] == "cpu":
        pngs = {"float32": f"{stem}.{SAMPLER}.{STEPS}.png"}
    else:
        pngs = {d: f"{stem}{p['tag']}.{SAMPLER}.{p['steps']}.{d.replace('float', 'fp')}.png" for d in p["renders"]}
    return (stem, stem + ".safetensors", pngs, f"{stem}{p['tag']}.json", f"{stem}{p['tag']}.compare.json",
            f"{stem}{p['tag']}.stipple")


def diff(a_png, b_png):
    """(mean abs, max abs) of two PNGs in 1/255, or an error string when their sizes differ."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(a_png).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(b_png).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return f"{a_png} is {a.shape}, {b_png} {b.shape}"
    d = np.abs(a - b)
    return float(d.mean()), int(d.max())


def drive(a):
    """--stipple: the diffusers part in a child process (unless --reuse finds its outputs), then `stipple generate`
    on the same file and job; prints mean and max abs difference and PASS/FAIL (cpu: mean <= 1/255; cuda: see
    verdict_cuda). Needs no torch."""
    import subprocess

    p = plan(a.family, a.device)
    stem, ckpt, pngs, settings_json, compare_json, sdir = paths(a.out, a.family, p)
    if not (a.reuse and all(os.path.exists(f) for f in (ckpt, *pngs.values(), settings_json))):
        child = [sys.executable, os.path.abspath(__file__), "--family", a.family, "--out", a.out,
                 "--build", a.build, "--fp32-weights", a.fp32_weights, "--device", a.device]
        t0 = time.time()
        child_p = subprocess.Popen(child)
        _, status, ru = os.wait4(child_p.pid, 0)
        if status:
            sys.exit(f"the diffusers part failed ({status})")
        print(f"diffusers part: {time.time() - t0:.0f} s, peak RSS {ru.ru_maxrss / 1024**2:.1f} GB", flush=True)
    with open(settings_json) as f:
        settings = json.load(f)
    os.makedirs(sdir, exist_ok=True)
    for f in os.listdir(sdir):  # stipple never writes over a file: start empty so its name is 00000-SEED.png
        os.remove(os.path.join(sdir, f))
    cmd = [a.stipple, "generate", "--model", ckpt, "--device", p["stipple_device"], "--prompt", settings["prompt"],
           "--negative", settings["negative"], "--seed", str(settings["seed"]), "--cfg", str(settings["cfg"]),
           "--sampler", settings["sampler"], "--steps", str(settings["steps"]), "--width", str(settings["width"]),
           "--height", str(settings["height"]), "--out", sdir, "--no-preview",
           *STIPPLE_ARGS.get(a.family, []), *a.stipple_arg]
    print("running", " ".join(repr(c) if " " in c else c for c in cmd), flush=True)
    t0 = time.time()
    sp = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = sp.stdout.read()
    _, status, ru = os.wait4(sp.pid, 0)
    seconds = time.time() - t0
    if status:
        sys.exit(f"stipple failed ({status}): {stdout}")
    out = json.loads(stdout.strip().splitlines()[-1])["path"]
    if p["device"] == "cuda":
        return compare_cuda(a, p, settings, out, pngs, compare_json, cmd, seconds, ru)
    png = pngs["float32"]
    d = diff(png, out)
    if isinstance(d, str):
        sys.exit(f"FAIL: stipple's image differs in size from diffusers': {d}")
    mean, peak = d
    verdict = "PASS" if mean <= 1.0 else "FAIL"
    result = {"family": a.family, "mean_abs_255": round(mean, 4), "max_abs_255": peak, "verdict": verdict,
              "stipple_seconds": round(seconds, 1), "stipple_peak_rss_gb": round(ru.ru_maxrss / 1024**2, 2),
              "stipple_image": out, "diffusers_image": png, "command": cmd}
    with open(compare_json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{a.family}: stipple vs diffusers, {settings['width']}x{settings['height']} euler 4 steps seed "
          f"{settings['seed']}: mean abs {mean:.4f}/255, max {peak}/255 -> {verdict} (mean <= 1/255); stipple "
          f"{seconds:.0f} s, peak RSS {ru.ru_maxrss / 1024**2:.1f} GB", flush=True)
    return 0 if verdict == "PASS" else 1


def verdict_cuda(vs32, floor, fp16_finite):
    """PASS when stipple vs diffusers fp32 has mean <= 1/255, or <= 1.5 x diffusers' own fp16-vs-fp32 mean (fp16's
    noise floor: stipple on the GPU computes in fp16); the second rule only when diffusers' fp16 image is finite."""
    if vs32[0] <= 1.0:
        return "PASS", "mean vs fp32 <= 1/255"
    if fp16_finite and vs32[0] <= 1.5 * floor[0]:
        return "PASS", f"mean vs fp32 <= 1.5 x diffusers fp16 vs fp32 ({1.5 * floor[0]:.4f}/255)"
    return "FAIL", f"mean vs fp32 > 1/255 and > 1.5 x diffusers fp16 vs fp32 ({1.5 * floor[0]:.4f}/255)"


def compare_cuda(a, p, settings, out, pngs, compare_json, cmd, seconds, ru):
    """--device cuda: stipple's PNG against diffusers' fp32 and fp16 renders, and those two against each other."""
    pairs = {"stipple_vs_fp32": (out, pngs["float32"]), "stipple_vs_fp16": (out, pngs["float16"]),
             "diffusers_fp16_vs_fp32": (pngs["float16"], pngs["float32"])}
    d = {k: diff(*v) for k, v in pairs.items()}
    bad = [v for v in d.values() if isinstance(v, str)]
    if bad:
        sys.exit(f"FAIL: images differ in size: {bad}")
    fp16_finite = settings["renders"]["float16"]["image_finite"]
    verdict, why = verdict_cuda(d["stipple_vs_fp32"], d["diffusers_fp16_vs_fp32"], fp16_finite)
    w, h, n = settings["width"], settings["height"], settings["steps"]
    dev = "cpu (FULL_SIZE_CHECK_FAKE_CUDA)" if p.get("fake") else "cuda"
    line = (f"{a.family} {w}x{h} {settings['sampler']} {n} {dev}: stipple({p['stipple_device']}) vs diffusers fp32 "
            f"mean {d['stipple_vs_fp32'][0]:.4f}/255 max {d['stipple_vs_fp32'][1]}; vs diffusers fp16 mean "
            f"{d['stipple_vs_fp16'][0]:.4f}/255 max {d['stipple_vs_fp16'][1]}; diffusers fp16 vs fp32 mean "
            f"{d['diffusers_fp16_vs_fp32'][0]:.4f}/255 max {d['diffusers_fp16_vs_fp32'][1]}"
            f"{'' if fp16_finite else ' (diffusers fp16 image not finite)'} -> {verdict} ({why}); stipple "
            f"{seconds:.0f} s")
    result = {"family": a.family, "device": dev, "width": w, "height": h, "steps": n,
              **{k: {"mean_abs_255": round(v[0], 4), "max_abs_255": v[1]} for k, v in d.items()},
              "diffusers_fp16_finite": fp16_finite, "verdict": verdict, "why": why,
              "rule": "PASS when stipple vs diffusers fp32 mean <= 1/255 or <= 1.5 x diffusers fp16 vs fp32 mean",
              "stipple_seconds": round(seconds, 1), "stipple_peak_rss_gb": round(ru.ru_maxrss / 1024**2, 2),
              "stipple_image": out, "diffusers_images": pngs, "command": cmd}
    with open(compare_json, "w") as f:
        json.dump(result, f, indent=1)
    print(line, flush=True)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    _args = arg_parser().parse_args()  # --help and argument errors come before the heavy imports below
    if _args.stipple:
        sys.exit(drive(_args))

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_configs  # noqa: E402
from diffusers_reference import IMAGE_NEGATIVE, IMAGE_PROMPT, IMAGE_SEED, SCHEDULERS, reference_image  # noqa: E402
from model_folder import ROOT  # noqa: E402
from ldm_names import cast  # noqa: E402
from ldm_verify import convert_component, expect_equal, expected_state  # noqa: E402
from single_file_fixtures import ST_DTYPE, sd1_checkpoint, sdxl_checkpoint  # noqa: E402

TOKENIZERS = {"sd15": [os.path.join(ROOT, "tests", "fixtures", "tiny-sd15", "tokenizer")],
              "sd2": [os.path.join(ROOT, "tests", "fixtures", "tiny-sd2", "tokenizer")],
              "sd2v": [os.path.join(ROOT, "tests", "fixtures", "tiny-sd2", "tokenizer")],
              "sdxl": [os.path.join(ROOT, "tests", "fixtures", "tiny-sdxl", "tokenizer"),
                       os.path.join(ROOT, "tests", "fixtures", "tiny-sdxl", "tokenizer_2")]}


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def build(family, dtype):
    """{component: module} in fp16 (the file's values) and the scheduler."""
    if family == "sd15":
        unet, te, vae, sched = tiny_configs.build_sd15_random("cpu", dtype=dtype)
        models = {"unet": unet, "text_encoder": te, "vae": vae}
    elif family in ("sd2", "sd2v"):
        from diffusers import PNDMScheduler

        models = {c: tiny_configs.random_component("sd2", c, "cpu", dtype=dtype) for c in ("unet", "text_encoder", "vae")}
        sched = tiny_configs.random_scheduler("sd2")
        if family == "sd2v":
            sched = PNDMScheduler(**dict(tiny_configs.SD2_SCHEDULER, prediction_type="v_prediction"))
    else:
        unet, te, te2, vae, sched = tiny_configs.build_sdxl_random("cpu", dtype=dtype)
        models = {"unet": unet, "text_encoder": te, "text_encoder_2": te2, "vae": vae}
    for m in models.values():
        m.half()
    return models, sched


def write_checkpoint(family, models, sched, path):
    if family == "sd15":
        state = sd1_checkpoint(models["unet"], models["text_encoder"], models["vae"], sched, torch.float16)
    elif family in ("sd2", "sd2v"):
        from arch_fixtures import ldm_state, sd2_text_encoder

        te_state, _, _ = sd2_text_encoder(models["text_encoder"])
        state = ldm_state(models["unet"], models["vae"], te_state, sched, torch.float16)
    else:
        state = sdxl_checkpoint(models["unet"], models["text_encoder"], models["text_encoder_2"], models["vae"],
                                torch.float16)
    save_file(state, path, metadata={"format": "pt"})
    dtypes = {}
    for v in state.values():
        dtypes[ST_DTYPE[v.dtype]] = dtypes.get(ST_DTYPE[v.dtype], 0) + 1
    return {"tensors": len(state), "tensor_dtypes": dtypes, "bytes": os.path.getsize(path)}


def stream_fp32(path, state):
    """Writes `state` as a safetensors file with every float tensor in float32, converting one tensor at a time."""
    items = [(k, t) for k, t in state.items()]
    header, off = {}, 0
    for k, t in items:
        dtype = torch.float32 if t.is_floating_point() else t.dtype
        n = t.numel() * dtype.itemsize
        header[k] = {"dtype": ST_DTYPE[dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for k, t in items:
            t = t.to(torch.float32) if t.is_floating_point() else t
            f.write(t.contiguous().view(torch.uint8).reshape(-1).numpy().data)
    assert os.path.getsize(path) == 8 + len(hb) + off, path


def replace_with_fp32_(module, state, mapped=False):
    """Puts `state` (names as the converter gives them) into `module` as float32 tensors, one at a time (fresh
    copies, or `state`'s own tensors where they already are float32: the memory-mapped scratch file)."""
    own = set(module.state_dict())
    named = {}
    for k, t in state.items():
        name = k if k in own else k[len("text_model."):] if k.startswith("text_model.") else k
        assert name in own and name not in named, k
        named[name] = k
    assert set(named) == own, own ^ set(named)
    for name, k in named.items():
        mod_name, _, attr = name.rpartition(".")
        sub = module.get_submodule(mod_name)
        t = state.pop(k)
        t = t if t.dtype == torch.float32 and mapped else t.to(torch.float32, copy=True)
        if attr in sub._parameters:
            sub._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
        elif attr in sub._buffers:
            sub._buffers[attr] = t
        else:
            raise KeyError(name)
    bad = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
           if t.is_floating_point() and t.dtype != torch.float32]
    assert not bad, bad[:5]


def sd2_text_encoder_back(ck, te):
    """SD2's OpenCLIP-H through diffusers' converter, less the 24th layer the file carries and SD2 does not use."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    got = convert_open_clip_checkpoint(te, ck, prefix="cond_stage_model.model.")
    last = te.config.num_hidden_layers
    for k in [k for k in got if k.startswith(f"text_model.encoder.layers.{last}.")]:
        del got[k]
    return got


def read_back(path, models, scratch=None, sd2=False):
    """diffusers' converters on the file: every component given back exactly, then loaded as float32 (through a
    memory-mapped scratch file `scratch % component` when given). Returns the counts and the scratch files."""
    ck = load_file(path)
    name = os.path.basename(path)
    counts, files = {}, []
    for comp, module in models.items():
        if comp == "text_encoder" and sd2:
            conv = sd2_text_encoder_back(ck, module)
            want = cast(tiny_configs.text_encoder_state_dict(module), torch.float16)
        else:
            conv = convert_component(ck, comp, module, label=name)
            want = expected_state(comp, module, torch.float16)
        counts[comp] = expect_equal(f"{name} {comp}", conv, want)
        print(f"verify {name}: {comp}: {counts[comp]} tensors given back by diffusers' converter, all equal",
              flush=True)
        if scratch:
            files.append(scratch % comp)
            stream_fp32(files[-1], conv)
            conv = load_file(files[-1])
        replace_with_fp32_(module, conv, mapped=bool(scratch))
        del conv
    del ck
    return counts, files


def pipeline(family, models, sched):
    import diffusers
    from transformers import CLIPTokenizer

    cls_name, extra = SCHEDULERS[SAMPLER]
    scheduler = getattr(diffusers, cls_name).from_config(sched.config, **extra)
    toks = [CLIPTokenizer.from_pretrained(d) for d in TOKENIZERS[family]]
    if family in ("sd15", "sd2", "sd2v"):
        pipe = diffusers.StableDiffusionPipeline(
            vae=models["vae"], text_encoder=models["text_encoder"], tokenizer=toks[0], unet=models["unet"],
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=models["vae"], text_encoder=models["text_encoder"], text_encoder_2=models["text_encoder_2"],
            tokenizer=toks[0], tokenizer_2=toks[1], unet=models["unet"], scheduler=scheduler,
            add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def no_tf32():
    """The fp32 render in true float32: torch lets cuDNN convolutions use TF32 by default (10-bit mantissa)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; the old flags are deprecated there
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def render_cuda(a, p, pipe, models, pngs):
    """--device cuda: the read-back modules onto the GPU in float16 and rendered, then converted to float32 in place
    and rendered again, from the same initial latents: drawn in float32 by torch.Generator('cpu').manual_seed(seed),
    as the fp32 pipeline (and stipple) draw them, then cast and moved (a fp16 pipeline left to draw them itself
    would draw in fp16 on the CPU: other numbers). Returns the JSON's `renders`."""
    dev = torch.device(p["torch_device"])
    size, steps = p["size"], p["steps"]
    shape = (1, pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(IMAGE_SEED), dtype=torch.float32)
    if dev.type == "cuda":
        no_tf32()
    renders = {}
    for dtype_name in p["renders"]:
        dtype = getattr(torch, dtype_name)
        t0 = time.time()
        for m in models.values():
            m.to(device=dev, dtype=dtype)  # in place: the previous dtype's copy is freed as each tensor converts
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        moved = round(time.time() - t0, 1)
        t0 = time.time()
        img = reference_image(pipe, steps, height=size, width=size, output_type="np",
                              latents=latents.to(dev, dtype))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        finite = bool(np.isfinite(img).all())
        pipe.numpy_to_pil(np.nan_to_num(img)[None])[0].save(pngs[dtype_name])
        vae = "float32" if dtype == torch.float32 else "float16"
        if a.family == "sdxl" and dtype == torch.float16:
            # SDXL's VAE overflows in fp16; the pipeline decodes in fp32 itself where the config says force_upcast
            assert pipe.vae.config.force_upcast, "SDXL's VAE config must have force_upcast"
            vae = "float32 for the decode (StableDiffusionXLPipeline upcasts the VAE: its config has force_upcast)"
        renders[dtype_name] = {
            "image": os.path.basename(pngs[dtype_name]), "modules": dtype_name, "vae": vae, "device": str(dev),
            "tf32": False if dev.type == "cuda" else None, "image_finite": finite,
            "image_mean": round(float(np.nan_to_num(img).mean()), 6),
            "seconds_to_device": moved, "seconds_render": round(time.time() - t0, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None}
        print(f"rendered {pngs[dtype_name]}: {renders[dtype_name]}", flush=True)
    return renders


def main():
    import diffusers

    a = arg_parser().parse_args()
    p = plan(a.family, a.device)
    torch.set_grad_enabled(False)
    os.makedirs(a.out, exist_ok=True)
    stem, ckpt, pngs, settings_json, _, _ = paths(a.out, a.family, p)
    seconds = {}

    t0 = time.time()
    models, sched = build(a.family, torch.float16 if a.build == "fp16" else torch.float32)
    seconds["build"] = round(time.time() - t0, 1)
    t0 = time.time()
    file_info = write_checkpoint(a.family, models, sched, ckpt)
    seconds["write"] = round(time.time() - t0, 1)
    print(f"wrote {ckpt}: {file_info}", flush=True)
    t0 = time.time()
    counts, scratch = read_back(ckpt, models, stem + ".fp32.%s.safetensors" if a.fp32_weights == "mmap" else None,
                               sd2=a.family in ("sd2", "sd2v"))
    seconds["read_back"] = round(time.time() - t0, 1)

    pipe = pipeline(a.family, models, sched)
    size = p["size"]
    if p["device"] == "cpu":
        png = pngs["float32"]
        t0 = time.time()
        img = reference_image(pipe, STEPS, height=size, width=size, output_type="np")
        seconds["render"] = round(time.time() - t0, 1)
        finite = bool(np.isfinite(img).all())
        computed = {"computed_in": "float32 on the CPU (the file's fp16 values)", "image": os.path.basename(png)}
        generator = "torch.Generator('cpu').manual_seed(seed), latents drawn by the pipeline"
    else:
        renders = render_cuda(a, p, pipe, models, pngs)
        finite = renders["float32"]["image_finite"]
        img = None
        computed = {"computed_in": f"float16 and float32 on {p['torch_device']}"
                                   + (" (FULL_SIZE_CHECK_FAKE_CUDA: not a GPU figure)" if p.get("fake") else ""),
                    "device": p["device"], "renders": renders}
        generator = ("torch.Generator('cpu').manual_seed(seed): latents drawn in float32 on the CPU, then cast to "
                     "the render's dtype and moved to the device; the same generator passed to the pipeline")
    for f in scratch:
        os.remove(f)  # still mapped until the process ends; the space comes back then
    if img is not None:
        pipe.numpy_to_pil(np.nan_to_num(img)[None])[0].save(png)

    sc = pipe.scheduler
    settings = {
        "family": a.family, "checkpoint": os.path.basename(ckpt), "checkpoint_dtype": "F16", **file_info,
        "built_in": a.build, "built_on": "cpu", "fp32_weights": a.fp32_weights,
        "verified": {c: f"{n} tensors given back by diffusers' converter, all equal" for c, n in counts.items()},
        "pipeline": type(pipe).__name__, **computed,
        "prompt": IMAGE_PROMPT, "negative": IMAGE_NEGATIVE, "seed": IMAGE_SEED,
        "generator": generator, "cfg": CFG,
        "sampler": SAMPLER, "steps": p["steps"], "width": size, "height": size,
        "scheduler": f"{type(sc).__name__}.from_config({type(sched).__name__} config)",
        "timestep_spacing": sc.config.timestep_spacing, "timesteps": [round(float(t), 4) for t in sc.timesteps],
        "sigmas": [round(float(x), 4) for x in sc.sigmas],
        "tokenizers": [os.path.relpath(d, ROOT) for d in TOKENIZERS[a.family]],
        "image_finite": finite,
        **({"image_mean": round(float(np.nan_to_num(img).mean()), 6)} if img is not None else {}),
        "seconds": seconds, "peak_rss_mib": peak_rss_mib(),
        "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                      **({"cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name()}
                         if p["torch_device"] == "cuda" else {})},
    }
    with open(settings_json, "w") as f:
        json.dump(settings, f, indent=1)
    print(json.dumps(settings), flush=True)
    if not finite:
        sys.exit("the image has non-finite values")


if __name__ == "__main__":
    main()
