#!/usr/bin/env python3
"""PyTorch anchor figures for `stipple bench` on the GPU machine, measured in the same run.

    python scripts/torch_anchor.py [--family sd15|sdxl] [--batches 1,4,8,16] [--steps 20]

Random weights in fp16 on CUDA, diffusers' SD1.5 or SDXL architecture (step time does not depend on the
weight values). Prints, one line each: the text encoder (batch 2), one CFG step (UNet on batch 2), the VAE
decode of one image, and for each k in --batches the images per second of k images sampled together
(text encoders once, `steps` UNet calls on 2k rows, k decodes), which is what `stipple bench --throughput`
measures. Eager PyTorch with SDPA attention, channels-last UNet; `--json` writes the same as one object.
"""
import argparse
import json
import time

import torch


def timed(fn, repeats):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def clip_l():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                          projection_dim=768)


def build(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if family == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        encoders = [CLIPTextModel(clip_l())]
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2)
        return unet, encoders, vae, 64, 768, None
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=2)
    big = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                         projection_dim=1280, hidden_act="gelu")
    encoders = [CLIPTextModel(clip_l()), CLIPTextModel(big)]
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=1024,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2)
    return unet, encoders, vae, 128, 2048, 1280


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev, dt = "cuda", torch.float16
    with torch.device(dev):
        unet, encoders, vae, lat, ctx, pooled = build(args.family)
    unet = unet.to(dev, dt).eval().to(memory_format=torch.channels_last)
    encoders = [e.to(dev, dt).eval() for e in encoders]
    vae = vae.to(dev, dt).eval()
    out = {"family": args.family, "torch": torch.__version__}

    def unet_call(rows):
        x = torch.randn(rows, 4, lat, lat, device=dev, dtype=dt).to(memory_format=torch.channels_last)
        c = torch.randn(rows, 77, ctx, device=dev, dtype=dt)
        t = torch.full((rows,), 500, device=dev)
        extra = {}
        if pooled:
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(rows, pooled, device=dev, dtype=dt),
                                           "time_ids": torch.randn(rows, 6, device=dev, dtype=dt)}}
        return lambda: unet(x, t, encoder_hidden_states=c, **extra)

    ids = torch.randint(0, 49407, (2, 77), device=dev)
    with torch.inference_mode():
        te = timed(lambda: [e(ids) for e in encoders], args.repeats)
        step = timed(unet_call(2), args.repeats)
        z = torch.randn(1, 4, lat, lat, device=dev, dtype=dt)
        dec = timed(lambda: vae.decode(z), args.repeats)
        out.update(text_encoders_ms=te * 1e3, cfg_step_ms=step * 1e3, vae_decode_ms=dec * 1e3)
        print(f"torch {args.family}: text encoder(s) batch 2 {te * 1e3:.2f} ms; CFG step (UNet batch 2) "
              f"{step * 1e3:.2f} ms; VAE decode of one image {dec * 1e3:.2f} ms")
        for k in (int(b) for b in args.batches.split(",")):
            call = unet_call(2 * k)
            zk = torch.randn(k, 4, lat, lat, device=dev, dtype=dt)

            def images():
                for e in encoders:
                    e(ids)
                for _ in range(args.steps):
                    call()
                for i in range(k):
                    vae.decode(zk[i:i + 1])

            t = timed(images, max(1, args.repeats // 2))
            out[f"images_per_s_batch_{k}"] = k / t
            print(f"torch {args.family}: {k} image(s) together, {args.steps} steps: {k / t:.2f} images/s "
                  f"({t * 1e3 / k:.0f} ms per image)")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
