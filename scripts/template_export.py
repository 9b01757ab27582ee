"""Architecture templates (templates/NAME): the full-size graphs and weight maps without weights,
gzip-compressed, and the CLIP vocabulary they share. TEMPLATES names them; importing this module
needs only the standard library (torch is imported when a template is exported)."""
import os
import shutil
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEMPLATES = {
    "sd15-fp32": ("sd15", "fp32"),
    "sd15-fp16": ("sd15", "fp16"),
    "sdxl-fp32": ("sdxl", "fp32"),
    "sdxl-fp16": ("sdxl", "fp16"),
    "sd2-fp32": ("sd2", "fp32"),
    "sd2-fp16": ("sd2", "fp16"),
    "sd15-inpaint-fp32": ("sd15-inpaint", "fp32"),
    "sd15-inpaint-fp16": ("sd15-inpaint", "fp16"),
}
# The family model_index.json names for each architecture.
INDEX_FAMILY = {"sd15": "sd1", "sd15-inpaint": "sd1", "sd2": "sd2", "sdxl": "sdxl"}
# The example latent size the template graphs are traced at. The graphs do not depend on it (checked:
# byte-identical to the sample_size exports), and it keeps fp16 tracing possible on a CPU (fp16 matmul
# without AVX-512 FP16 runs at ~1 GFLOP/s).
TEMPLATE_LATENT = 8
GZIPPED = ("model.onnx", "weightmap.json", "model.cuda.onnx", "weightmap.cuda.json", "model.fused.onnx",
           "weightmap.fused.json")


def gzip_file(src, dst):
    """gzip -9 without a name or time in the header: the same input gives the same bytes."""
    import gzip

    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as z:
        z.write(data)


def export_template(name, out, device="cpu", optimize=None):
    """Writes the template NAME to `out`: full-size architecture, random weights, no weights kept.

    Components are built and exported one at a time (SDXL in fp32 is 14 GB of parameters). With
    optimize="cuda" the UNet's weights are kept in a temporary folder for ort_fused, whose fused graph
    and weight map join the template.
    """
    import torch

    import tiny_configs
    from model_folder import write_index, write_scheduler
    from onnx_export import export_text_encoder, export_unet, export_vae_decoder, export_vae_encoder, vae_scale_factor

    family, dtype_name = TEMPLATES[name]
    dtype = torch.float16 if dtype_name == "fp16" else torch.float32
    lat_example = TEMPLATE_LATENT
    with tempfile.TemporaryDirectory() as tmp:
        components = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
        with torch.no_grad():
            for c in components:
                te = tiny_configs.random_component(family, c, device).to(dtype)
                export_text_encoder(c, te, tmp, None)
                del te
            unet = tiny_configs.random_component(family, "unet", device).to(dtype)
            lat = unet.config.sample_size
            export_unet(unet, tmp, dtype, dtype if optimize else None, lat=lat_example)
            del unet
            vae = tiny_configs.random_component(family, "vae", device)
            export_vae_decoder(vae, lat_example, tmp, dtype, None)
            export_vae_encoder(vae, lat_example * vae_scale_factor(vae), tmp, dtype, None)
            import te_fp16  # the text encoders' fp16 graphs (--te-precision)
            import vae_fp16  # the VAE's fp16 graphs (--vae-precision)

            import vae_fused  # the VAE decoder's fused CUDA graph (--vae-graph)

            vae_fp16.add_to(tmp)
            vae_fused.fuse(tmp)
            te_fp16.add_to(tmp)
            import te_fused  # the text encoders' fused fp16 graphs (--te-graph)

            te_fused.add_to(tmp)
        components += ["unet", "vae_decoder", "vae_encoder"]
        write_scheduler(tiny_configs.random_scheduler(family), tmp)
        write_index(tmp, INDEX_FAMILY[family], dtype, vae, lat, components,
                    True if family == "sdxl" else None)
        del vae
        if optimize:
            import ort_fused

            ort_fused.optimize_cuda(tmp)
        pack_template(tmp, out, components)


def add_fused_unet(name, out, work_dir=None):
    """Adds ORT's fused CUDA UNet (unet/model.cuda.onnx.gz + weightmap.cuda.json.gz) to the existing
    fp16 template NAME at `out`, by ort_fused's lean route, leaving its other files as they are (the lean
    route's graph is the same as export_template(optimize="cuda")'s: see ort_fused.optimize_cuda_lean).
    The random UNet is the one export_template builds (same seed, fp16 values); its config must equal
    the template's. work_dir: where the fp16 export is kept and reused (ort_fused.optimize_cuda_lean)."""
    import json

    import torch

    import ort_fused
    import tiny_configs

    family, dtype_name = TEMPLATES[name]
    if dtype_name != "fp16":
        raise SystemExit(f"--lean makes the fused graph of fp16 templates only, not {name}")
    unet_out = os.path.join(out, "unet")
    with open(os.path.join(unet_out, "config.json")) as f:
        want = json.load(f)

    def make_unet():
        # Built in fp16: the same values as the fp32 build cast to fp16 (randomize_ draws in fp32).
        return tiny_configs.random_component(family, "unet", "cpu", dtype=torch.float16)

    with tempfile.TemporaryDirectory() as tmp:
        unet_dir = os.path.join(tmp, "unet")
        os.makedirs(unet_dir)
        fused = ort_fused.optimize_cuda_lean(make_unet, unet_dir, TEMPLATE_LATENT, config_out=unet_dir,
                                             work_dir=work_dir)
        with open(os.path.join(unet_dir, "config.json")) as f:
            got = json.load(f)
        if got != want:
            raise SystemExit(f"{unet_out}/config.json is not the config of the UNet made here: "
                             "re-export the template first")
        for f in ("model.cuda.onnx", "weightmap.cuda.json"):
            gzip_file(os.path.join(unet_dir, f), os.path.join(unet_out, f + ".gz"))
    return fused


def pack_template(src, out, components):
    """Copies a model folder's graphs (gzipped), weight maps (gzipped) and configs to `out`."""
    if os.path.exists(out):
        shutil.rmtree(out)
    for c in components:
        os.makedirs(os.path.join(out, c))
        for f in GZIPPED:
            if not os.path.exists(os.path.join(src, c, f)):
                continue
            if f == "model.onnx":
                # The plain graph carries every value's shape (template_shapes.py says why).
                from template_shapes import write_annotated

                write_annotated(os.path.join(src, c, f), os.path.join(out, c, f + ".gz"))
            else:
                gzip_file(os.path.join(src, c, f), os.path.join(out, c, f + ".gz"))
        shutil.copy(os.path.join(src, c, "config.json"), os.path.join(out, c, "config.json"))
    os.makedirs(os.path.join(out, "scheduler"))
    shutil.copy(os.path.join(src, "scheduler", "scheduler_config.json"), os.path.join(out, "scheduler"))
    shutil.copy(os.path.join(src, "model_index.json"), out)


def write_clip_template(out):
    """The CLIP BPE vocabulary every template shares: vocab.json.gz, merges.txt.gz."""
    src = os.path.join(ROOT, "tests", "fixtures", "tiny-sd15", "tokenizer")
    os.makedirs(out, exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        gzip_file(os.path.join(src, f), os.path.join(out, f + ".gz"))
