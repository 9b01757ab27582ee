#!/usr/bin/env python3
"""Writes a stipple model folder from a diffusers SD1.x or SDXL pipeline, and the tiny test fixtures.

    python scripts/export_model.py --tiny                       # tests/fixtures/tiny-sd15 + references
    python scripts/export_model.py --tiny --family sdxl         # tests/fixtures/tiny-sdxl + references
    python scripts/export_model.py --tiny --family sd2          # tests/fixtures/tiny-sd2 (v-prediction)
    python scripts/export_model.py --tiny --family sd1-inpaint  # tests/fixtures/tiny-sd15-inpaint (9-ch UNet)
    python scripts/export_model.py --from DIR --out models/NAME [--dtype fp16]     # SD1.x or SDXL folder
    python scripts/export_model.py --random sd15 --dtype fp16 --device cuda --out /tmp/sd15   # benchmarks
    python scripts/export_model.py --random sdxl --dtype fp16 --device cuda --out /tmp/sdxl
    python scripts/export_model.py --optimize cuda --model models/NAME   # + ORT's fused CUDA UNet (ort_fused.py)
    python scripts/export_model.py --template sd15-fp16 [--optimize cuda] [--out DIR]   # templates/sd15-fp16
    python scripts/export_model.py --template sdxl-fp16 --optimize cuda --lean   # + its fused UNet, 10 GB
    python scripts/export_model.py --template clip                        # templates/clip (CLIP BPE vocabulary)
    python scripts/export_model.py --add vae_encoder --model tests/fixtures/tiny-sd15   # one new component

Needs PyTorch, diffusers, transformers and onnx (a virtual environment outside the repo:
`python3 -m venv ~/venv && ~/venv/bin/pip install torch diffusers transformers onnx onnxruntime`, about 8 minutes
and 5.8 GB on 2 CPU cores). `--tiny` takes about a minute on 2 CPU cores; a real SD1.5 export about 5 minutes.

The layout (README, "Models"), per component (text_encoder, text_encoder_2 for SDXL, unet, vae_decoder,
vae_encoder):
  model.onnx          graph; every parameter initializer stored as external data in `weights.bin`, a file
                      that never exists on disk: stipple assembles it in memory from weights.safetensors
  weights.safetensors the parameters under their diffusers names (text encoder with the classic
                      `text_model.` level), torch layout
  weightmap.json      initializer -> source parameter, transform (identity|transpose), dtype, offset, length
  config.json         the diffusers/transformers config the component was built from
plus model_index.json (family, dtype, defaults) and tokenizer/ (vocab.json, merges.txt; SDXL also
tokenizer_2/, which pads with "!" where tokenizer/ pads with <|endoftext|>).

Text encoders output last_hidden_state, the pooled output (`pooler_output`; `text_embeds`, pooled and
projected, for SDXL's second encoder) and penultimate_hidden_state (what SDXL conditions on). The SDXL
UNet takes `text_embeds` and `time_ids` (the added conditioning) besides sample, timestep and context.
The VAE encoder (for image-to-image) takes `sample` [batch, 3, H, W] in [-1, 1] and outputs
`latent_parameters` [batch, 2*latent_channels, H/f, W/f]: the moments after quant_conv, mean and logvar
concatenated on channels, before the [-30, 20] clamp of diffusers' DiagonalGaussianDistribution. Both VAE
graphs are fp32 whatever the model dtype (fp16 VAEs overflow).

Two export facts keep every weight under its own name: no constant folding (Linear weights stay
`...to_q.weight` behind an explicit Transpose, so every transform is the identity) and no parameters
with equal values at export time (the exporter would merge them into one initializer).

--template NAME (sd15-fp32, sd15-fp16, sdxl-fp32, sdxl-fp16, sd2-fp32, sd2-fp16, sd15-inpaint-fp32,
sd15-inpaint-fp16) writes the architecture template stipple
embeds to templates/NAME: the full-size architecture with random weights (tiny_configs,
built and exported one component at a time: SDXL fp32 is 14 GB of parameters), kept as the layout above
without weights.safetensors and tokenizers; model.onnx and weightmap.json (and the fused
model.cuda.onnx / weightmap.cuda.json with --optimize cuda) are stored as deterministic `gzip -9` files
(.gz, no name or time in the header), next to each component's config.json, model_index.json and
scheduler/scheduler_config.json. Weight-map sources are the diffusers parameter names, as in a model folder.
The graphs are traced at an 8x8 example latent: they do not depend on it (checked byte for byte against
the sample_size exports, SD1.5 fp32 and the tiny UNets in fp32/fp16), and fp16 tracing on a CPU without
AVX-512 FP16 is otherwise too slow. On 2 CPU cores an SD1.5 template takes ~2.5 min (7.6 GB peak in
fp16), an SDXL one ~7 min (14.8 GB peak in fp32). With --optimize cuda, sd15-fp16 went over 24 GB here (ORT's
optimizer on the 3.4 GB fp32 graph; killed): make it on a machine with more memory (the GPU machine), or
add --lean: `--template sd15-fp16|sdxl-fp16 --optimize cuda --lean [--work DIR]` adds only the fused UNet
(unet/model.cuda.onnx.gz + weightmap.cuda.json.gz) to the existing fp16 template, leaving its other files
alone (ort_fused.optimize_cuda_lean): the random UNet is built in fp16 (the values of the fp32 build),
exported in fp16 at the 8x8 latent, and ORT's optimizer reads its weights from the exporter's files on
demand instead of holding the graph's weights in memory. For sd15-fp16 it writes the same graph as the
fp32 route (node for node, initializer for initializer, the same weight map; only the name fields of
Constant tensors and leftover value_info annotations differ). Measured with /usr/bin/time -v on 2 CPU
cores shared with other jobs (load ~7): sdxl-fp16 20 min, peak RSS 10.0 GB (fp16 build + hashes ~5 min;
export ~1 min, 7.6 GB; ORT's fusions 13.7 min, 10.0 GB at their end; fp16 conversion, trace and write
<1 min), 4.8 GB of export on disk; sd15-fp16 3.8 min, peak 7.9 GB (a graph under 2 GB is exported
with its weights embedded). --work DIR keeps the fp16 export there and a rerun reuses it (the
optimizer alone: for sdxl-fp16 the same bytes again, 19.5 min under heavier load, peak 9.7 GB).
--template clip writes templates/clip/vocab.json.gz and merges.txt.gz from the tiny fixture's tokenizer.
Each template is checked after writing (scripts/check_template.py).

--add vae_encoder --model DIR adds the VAE encoder to an existing tiny fixture without touching its other
files (model_index.json gains the component): the tiny model is rebuilt as --tiny builds it, its VAE
decoder must equal DIR/vae_decoder/weights.safetensors bit for bit, and the encoder, its weights and
reference/vae_encoder.safetensors (an image batch, diffusers' latent_dist mean and logvar) are written.

With --tiny it also writes the tiny UNet's fused CUDA graph (--optimize cuda) with the sha256 of each
weight the optimizer wrote (reference/unet_cuda_initializers.json), and <fixture>/reference/: token ids,
text embeddings, torch.randn latents (SD1), one UNet output and the final images of the diffusers pipeline (StableDiffusionPipeline or
StableDiffusionXLPipeline) for each scheduler, and reference/vae_encoder.safetensors (as --add does).
"""
import argparse
import os
import shutil
import sys

# The heavy modules (torch, numpy, onnx) are imported after the arguments are parsed: --help works
# with a plain python3.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from template_export import TEMPLATES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="write the tiny test model and its references")
    ap.add_argument("--tiny-sdxl", action="store_true", help="same as --tiny --family sdxl")
    ap.add_argument("--family", choices=["sd1", "sdxl", "sd2", "sd1-inpaint"], default="sd1",
                    help="which tiny model --tiny writes")
    ap.add_argument("--from", dest="src", help="a diffusers SD1.x or SDXL pipeline folder (or hub id in the cache)")
    ap.add_argument("--out", help="output model folder")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--random", choices=["sd15", "sdxl"], help="full-size architecture with random weights")
    ap.add_argument("--tokenizer", help="tokenizer folder for --random (default: the tiny fixture's)")
    ap.add_argument("--device", default="cpu", help="torch device to build and export on (cuda for --random)")
    ap.add_argument("--optimize", choices=["cuda"], help="also write ONNX Runtime's SD-fused CUDA graph of the UNet")
    ap.add_argument("--lean", action="store_true",
                    help="with --template NAME --optimize cuda: add only the fused UNet to the existing fp16 "
                         "template, exported in fp16 with its weights kept on disk (ort_fused.optimize_cuda_lean)")
    ap.add_argument("--work", help="with --lean: keep the fp16 export in this folder and reuse it on a rerun")
    ap.add_argument("--model", help="with --optimize or --add: an existing stipple model folder")
    ap.add_argument("--template", choices=sorted(TEMPLATES) + ["clip"],
                    help="write an architecture template (default --out templates/NAME)")
    ap.add_argument("--add", choices=["vae_encoder"], help="add one component to an existing tiny fixture (--model)")
    a = ap.parse_args()
    import model_folder
    import template_export

    if a.template:
        out = a.out or os.path.join(ROOT, "templates", a.template)
        if a.template == "clip":
            template_export.write_clip_template(out)
        elif a.lean:
            if a.optimize != "cuda":
                ap.error("--lean goes with --optimize cuda")
            template_export.add_fused_unet(a.template, out, a.work)
        else:
            template_export.export_template(a.template, out, a.device, a.optimize)
        import check_template

        check_template.check(out)
        return
    if a.add:
        if not a.model:
            ap.error("--add needs --model DIR")
        model_folder.add_component(a.model, a.add)
        return
    if a.optimize and a.model and not (a.tiny or a.tiny_sdxl or a.random or a.src):
        import ort_fused

        ort_fused.optimize_cuda(a.model)
        return
    if a.tiny and a.family in ("sd2", "sd1-inpaint"):
        # No fused CUDA graph for these: their tests run on the CPU.
        name, writer = {"sd2": ("tiny-sd2", model_folder.tiny_sd2),
                        "sd1-inpaint": ("tiny-sd15-inpaint", model_folder.tiny_sd15_inpaint)}[a.family]
        out = a.out or os.path.join(ROOT, "tests", "fixtures", name)
        if os.path.exists(out):
            shutil.rmtree(out)
        writer(out)
        import vae_fused  # hashes of the optimizer's own fused VAE weights to test against

        vae_fused.fuse(out, reference=True)
        import te_fused  # the fused text encoders, with numpy's hashes of their weights

        te_fused.add_to(out, reference=True)
        print(f"wrote {out}")
        return
    if a.tiny or a.tiny_sdxl:
        sdxl = a.tiny_sdxl or a.family == "sdxl"
        out = a.out or os.path.join(ROOT, "tests", "fixtures", "tiny-sdxl" if sdxl else "tiny-sd15")
        if os.path.exists(out):
            shutil.rmtree(out)
        (model_folder.tiny_sdxl if sdxl else model_folder.tiny)(out)
        # The fused graph of the tiny UNet, and hashes of the optimizer's own weights to test against.
        import ort_fused

        ref = os.path.join(out, "reference", "unet_cuda_initializers.json")
        ort_fused.optimize_cuda(out, reference_out=ref)
        import vae_fused

        vae_fused.fuse(out, reference=True)
        import te_fused  # the fused text encoders, with numpy's hashes of their weights

        te_fused.add_to(out, reference=True)
        print(f"wrote {out}")
    elif a.random and a.out:
        tok = a.tokenizer or os.path.join(ROOT, "tests", "fixtures", "tiny-sd15", "tokenizer")
        model_folder.random_model(a.random, a.out, a.dtype, tok, a.device)
        if a.optimize:
            import ort_fused

            ort_fused.optimize_cuda(a.out)
        print(f"wrote {a.out}")
    elif a.src and a.out:
        model_folder.from_diffusers(a.src, a.out, a.dtype)
        if a.optimize:
            import ort_fused

            ort_fused.optimize_cuda(a.out)
        print(f"wrote {a.out}")
    else:
        ap.error("give --tiny [--family sdxl], --random sd15|sdxl --out DIR, --from DIR --out DIR, "
                 "--template NAME, --add vae_encoder --model DIR, or --optimize cuda --model DIR")


if __name__ == "__main__":
    main()
