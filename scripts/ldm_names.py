"""diffusers -> LDM (A1111/Civitai single-file) tensor names, computed from the module configs, and
the LDM-only tensors: the DDPM buffers of LDM's register_schedule, EMA names, the CLIP position ids."""
import numpy as np
import torch

import tiny_configs

LOGIT_SCALE = 4.6052  # ln(100), OpenCLIP's trained value


def apply_module_map(state, modules, inner=None, transform=None):
    """Renames every tensor of `state` by its module prefix.

    modules: {diffusers module prefix: LDM prefix}; a name maps through its longest matching prefix.
    inner(kind, rest) renames what follows the prefix (kind = the map it came from); transform(ldm, t) may
    reshape. Fails when a tensor has no prefix, a prefix is unused, or two tensors meet on one name."""
    out, used = {}, set()
    prefixes = sorted(modules, key=len, reverse=True)
    for name, t in state.items():
        pre = next((p for p in prefixes if name.startswith(p + ".")), None)
        if pre is None:
            raise KeyError(f"no LDM mapping for {name}")
        used.add(pre)
        kind, ldm_pre = modules[pre]
        rest = name[len(pre) + 1:]
        ldm = ldm_pre + "." + (inner(kind, rest) if inner else rest)
        assert ldm not in out, ldm
        out[ldm] = transform(ldm, t) if transform else t
    unused = set(modules) - used
    assert not unused, f"mapped modules with no tensors: {sorted(unused)}"
    return out


UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def rename_first(table, rest):
    head, _, tail = rest.partition(".")
    return table.get(head, head) + ("." + tail if tail else "")


def per_block(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def check_transformer_depth(state, prefix, depth):
    blocks = {int(k[len(prefix):].split(".")[2]) for k in state if k.startswith(prefix + ".transformer_blocks.")}
    assert blocks == set(range(depth)), (prefix, sorted(blocks), depth)


def unet_to_ldm(unet):
    """diffusers UNet2DConditionModel state -> `model.diffusion_model.*` (LDM openaimodel.UNetModel)."""
    cfg, state = unet.config, unet.state_dict()
    n, lpb = len(cfg.down_block_types), cfg.layers_per_block
    assert isinstance(lpb, int), lpb
    assert len(cfg.up_block_types) == n and cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
    depth_down = per_block(cfg.transformer_layers_per_block, n)
    depth_up = per_block(cfg.reverse_transformer_layers_per_block or list(reversed(depth_down)), n)
    m = {"conv_in": ("top", "input_blocks.0.0"), "time_embedding.linear_1": ("top", "time_embed.0"),
         "time_embedding.linear_2": ("top", "time_embed.2"), "conv_norm_out": ("top", "out.0"),
         "conv_out": ("top", "out.2")}
    if cfg.addition_embed_type == "text_time":
        m["add_embedding.linear_1"] = ("top", "label_emb.0.0")
        m["add_embedding.linear_2"] = ("top", "label_emb.0.2")
    else:
        assert cfg.addition_embed_type is None and cfg.class_embed_type is None
    for i, kind in enumerate(cfg.down_block_types):
        attn = "CrossAttn" in kind
        for j in range(lpb):
            idx = 1 + i * (lpb + 1) + j
            m[f"down_blocks.{i}.resnets.{j}"] = ("resnet", f"input_blocks.{idx}.0")
            if attn:
                m[f"down_blocks.{i}.attentions.{j}"] = ("attn", f"input_blocks.{idx}.1")
                check_transformer_depth(state, f"down_blocks.{i}.attentions.{j}", depth_down[i])
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = ("top", f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op")
    m["mid_block.resnets.0"] = ("resnet", "middle_block.0")
    m["mid_block.attentions.0"] = ("attn", "middle_block.1")
    m["mid_block.resnets.1"] = ("resnet", "middle_block.2")
    check_transformer_depth(state, "mid_block.attentions.0", depth_down[-1])
    for i, kind in enumerate(cfg.up_block_types):
        attn = "CrossAttn" in kind
        for j in range(lpb + 1):
            idx = i * (lpb + 1) + j
            m[f"up_blocks.{i}.resnets.{j}"] = ("resnet", f"output_blocks.{idx}.0")
            if attn:
                m[f"up_blocks.{i}.attentions.{j}"] = ("attn", f"output_blocks.{idx}.1")
                check_transformer_depth(state, f"up_blocks.{i}.attentions.{j}", depth_up[i])
        if i < n - 1:
            m[f"up_blocks.{i}.upsamplers.0.conv"] = ("top", f"output_blocks.{i * (lpb + 1) + lpb}.{2 if attn else 1}.conv")
    out = apply_module_map(state, m, lambda kind, rest: rename_first(UNET_RESNET, rest) if kind == "resnet" else rest)
    return {"model.diffusion_model." + k: v for k, v in out.items()}


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def vae_to_ldm(vae, prefix="first_stage_model."):
    """diffusers AutoencoderKL state -> LDM's AutoencoderKL names (encoder.down.i, decoder.up.(N-1-i))."""
    cfg, state = vae.config, vae.state_dict()
    n, lpb = len(cfg.down_block_types), cfg.layers_per_block
    assert len(cfg.up_block_types) == n and cfg.mid_block_add_attention and cfg.use_quant_conv and cfg.use_post_quant_conv
    m = {"quant_conv": ("top", "quant_conv"), "post_quant_conv": ("top", "post_quant_conv")}
    for part in ("encoder", "decoder"):
        m[f"{part}.conv_in"] = ("top", f"{part}.conv_in")
        m[f"{part}.conv_norm_out"] = ("top", f"{part}.norm_out")
        m[f"{part}.conv_out"] = ("top", f"{part}.conv_out")
        m[f"{part}.mid_block.resnets.0"] = ("resnet", f"{part}.mid.block_1")
        m[f"{part}.mid_block.attentions.0"] = ("attn", f"{part}.mid.attn_1")
        m[f"{part}.mid_block.resnets.1"] = ("resnet", f"{part}.mid.block_2")
    for i in range(n):
        for j in range(lpb):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = ("resnet", f"encoder.down.{i}.block.{j}")
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = ("top", f"encoder.down.{i}.downsample.conv")
        for j in range(lpb + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = ("resnet", f"decoder.up.{n - 1 - i}.block.{j}")
        if i < n - 1:
            m[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = ("top", f"decoder.up.{n - 1 - i}.upsample.conv")

    def inner(kind, rest):
        if kind == "resnet":
            return rename_first({"conv_shortcut": "nin_shortcut"}, rest)
        if kind == "attn":
            return rename_first(VAE_ATTN, rest.replace("to_out.0.", "to_out."))
        return rest

    def conv_1x1(ldm, t):
        # LDM's AttnBlock uses 1x1 Conv2d for q/k/v/proj_out: real files store [c, c, 1, 1].
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and t.dim() == 2:
            return t[:, :, None, None]
        return t

    out = apply_module_map(state, m, inner, conv_1x1)
    return {prefix + k: v for k, v in out.items()}


def clip_to_ldm(te, prefix, text_model_level=True):
    """transformers CLIPTextModel -> `<prefix>text_model.*` (or the old `<prefix>embeddings.*` layout)."""
    out = {}
    for k, v in tiny_configs.text_encoder_state_dict(te).items():
        assert k.startswith("text_model."), k
        out[prefix + (k if text_model_level else k[len("text_model."):])] = v
    # Real files carry the position_ids buffer (I64), which transformers 5 no longer saves.
    out[prefix + ("text_model." if text_model_level else "") + "embeddings.position_ids"] = position_ids_buffer(te)
    return out


def position_ids_buffer(te):
    bufs = dict(te.named_buffers())
    key = next(k for k in bufs if k.endswith("embeddings.position_ids"))
    return bufs[key].clone()


def open_clip_to_ldm(te2, prefix="conditioner.embedders.1.model."):
    """transformers CLIPTextModelWithProjection -> OpenCLIP's TextTransformer names (SDXL's embedders.1)."""
    cfg, state = te2.config, dict(te2.state_dict())
    out, used = {}, set()

    def take(name):
        used.add(name)
        return state[name]

    out["token_embedding.weight"] = take("text_model.embeddings.token_embedding.weight")
    out["positional_embedding"] = take("text_model.embeddings.position_embedding.weight")
    for i in range(cfg.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = take(f"{src}{a}.{p}")
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat([take(f"{src}self_attn.{x}_proj.{p}") for x in "qkv"], 0)
    out["ln_final.weight"] = take("text_model.final_layer_norm.weight")
    out["ln_final.bias"] = take("text_model.final_layer_norm.bias")
    out["text_projection"] = take("text_projection.weight").t().contiguous()
    out["logit_scale"] = torch.tensor(LOGIT_SCALE)
    assert used == set(state), set(state) - used
    return {prefix + k: v for k, v in out.items()}


def ddpm_buffers(sched_config):
    """The buffers of LDM's DDPM.register_schedule (v_posterior 0), float64 math as LDM does it."""
    n, b0, b1 = sched_config["num_train_timesteps"], sched_config["beta_start"], sched_config["beta_end"]
    if sched_config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(b0**0.5, b1**0.5, n, dtype=np.float64) ** 2
    elif sched_config["beta_schedule"] == "linear":
        betas = np.linspace(b0, b1, n, dtype=np.float64)
    else:
        raise ValueError(sched_config["beta_schedule"])
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in bufs.items()}


def check_ddpm_buffers(bufs, sched):
    """The buffers agree with diffusers' own schedule (its float32 betas and alphas_cumprod)."""
    assert torch.allclose(bufs["betas"], sched.betas, rtol=1e-5, atol=0), "betas"
    assert torch.allclose(bufs["alphas_cumprod"], sched.alphas_cumprod, rtol=1e-5, atol=0), "alphas_cumprod"


def ema_key(ldm_key):
    """LitEma's name: the key after `model.` with its dots removed."""
    assert ldm_key.startswith("model.diffusion_model.")
    return "model_ema." + ldm_key[len("model."):].replace(".", "")


def cast(state, dtype):
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
