"""Writes tests/fixtures/lora/: adapter files made by the real tools, and the ΔW they apply.

Adapters come from LyCORIS (every algo, randomised after creation since LyCORIS zero-initialises the up
factor), peft + diffusers (`save_lora_weights`, `convert_state_dict_to_kohya`/`_to_diffusers`) and renamed
kohya files (diffusers names and LDM names; the LDM map is checked against diffusers' own converter).
References: the weight delta each tool's forward pass applies (LyCORIS: captured from the module's own
`forward`, so the §6 double-scaling of `get_diff_weight` cannot leak in) or peft `merge_and_unload` minus base.
Run: /work/venv/bin/python scripts/lora_fixtures.py [--sdxl]
With --sdxl it writes tests/fixtures/lora-sdxl/ for the tiny SDXL model (tests/fixtures/tiny-sdxl, same
weights): both text encoders (`lora_te1_`/`lora_te2_`, `text_encoder_2.`), kohya's SDXL UNet names
(`input_blocks`, computed from the SDXL UNet and checked against diffusers' converter), LyCORIS and peft.
"""

import argparse
import copy
import json
import os
import sys


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdxl", action="store_true", help="write tests/fixtures/lora-sdxl instead")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import tiny_configs  # noqa: E402
from lora_ldm import diffusers_to_ldm_names  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "lora")
G = torch.Generator().manual_seed(4321)
MANIFEST = []
BASE_USED = {}  # (component, param) -> tensor


def rnd(shape, s=0.1):
    return torch.randn(shape, generator=G) * s


def build_base():
    unet, te, _, _ = tiny_configs.build_sd15()
    with torch.no_grad():
        for m in (unet, te):
            for p in m.parameters():
                p.copy_(p.half().float())
    return unet, te


def te_param_name(n):
    return n if n.startswith("text_model.") else "text_model." + n


def write_params(unet, te):
    params = [["unet", k, list(v.shape)] for k, v in unet.state_dict().items()]
    params += [["te", k, list(v.shape)] for k, v in tiny_configs.text_encoder_state_dict(te).items()]
    with open(os.path.join(OUT, "params.json"), "w") as f:
        json.dump(params, f)


def record(name, refs, mus, note, strengths=None, ref_file=None, dyn=None):
    """refs: {mu: {(component, param): delta}}; saves NAME.ref.safetensors and a manifest row."""
    MANIFEST.append(dict(name=name, mus=mus, note=note, strengths=strengths or {}, ref=ref_file or name, dyn=dyn))
    if ref_file is not None:
        return
    t = {}
    for mu, d in refs.items():
        for (comp, p), v in d.items():
            t[f"{mu}/{comp}/{p}"] = v.detach().float().contiguous()
    save_file(t, os.path.join(OUT, name + ".ref.safetensors"))


# ---------------------------------------------------------------- LyCORIS

def lyco_network(root, names, algo, dim=4, alpha=2.0, **kw):
    from lycoris.wrapper import LycorisNetwork

    LycorisNetwork.apply_preset(
        {"enable_conv": True, "target_module": [], "target_name": [f"^{n}$" for n in names],
         "module_algo_map": {}, "name_algo_map": {}, "lora_prefix": "lycoris", "use_fnmatch": False,
         "exclude_name": []}
    )
    net = LycorisNetwork(root, multiplier=1.0, lora_dim=dim, conv_lora_dim=dim, alpha=alpha,
                         conv_alpha=alpha, network_module=algo, **kw)
    assert len(net.loras) == len(names), (algo, [l.lora_name for l in net.loras], names)
    return net


def randomise(net, algo):
    with torch.no_grad():
        for lm in net.loras:
            for pn, p in lm.named_parameters():
                if pn == "dora_scale":
                    p.mul_(1.0 + rnd(p.shape, 0.2))
                elif algo in ("diag-oft", "boft") and pn == "oft_blocks":
                    p.copy_(rnd(p.shape, 0.05))
                elif pn == "rescale":
                    p.copy_(1.0 + rnd(p.shape, 0.1))
                else:
                    p.copy_(rnd(p.shape, 0.2))


def dummy_input(org):
    if isinstance(org, torch.nn.Linear):
        return torch.zeros(1, org.in_features)
    if isinstance(org, torch.nn.Conv2d):
        return torch.zeros(1, org.in_channels, 8, 8)
    if isinstance(org, torch.nn.GroupNorm):
        return torch.zeros(1, org.num_channels, 4, 4)
    if isinstance(org, torch.nn.LayerNorm):
        return torch.zeros(1, *org.normalized_shape)
    raise TypeError(type(org))


def lyco_delta(lm, mu):
    """The (ΔW, Δb) LyCORIS's own forward adds to the base at multiplier mu."""
    from lycoris.modules.norms import NormModule

    org = lm.org_module[0]
    lm.multiplier = mu
    with torch.no_grad():
        if isinstance(lm, NormModule):
            w, b = lm.make_weight(mu, None)
            return w - org.weight, (None if b is None else b - org.bias)
        cap = {}

        def op(x, weight=None, bias=None, *a, **k):
            cap["w"], cap["b"] = weight, bias
            return torch.zeros(())

        saved = lm.op
        lm.op = op
        try:
            lm.forward(dummy_input(org))
        finally:
            lm.op = saved
    return cap["w"].reshape(org.weight.shape), cap.get("b")


def lyco_fixture(name, root, comp, names, algo, mus=(1.0,), rename=None, dtype=None, **kw):
    net = lyco_network(root, names, algo, **kw)
    randomise(net, algo)
    if dtype is not None:  # the file is the truth: compute the reference from what is stored
        with torch.no_grad():
            for lm in net.loras:
                for p in list(lm.parameters()) + list(lm.buffers()):
                    if p.is_floating_point():
                        p.copy_(p.to(dtype).float())
    refs = {}
    mod_by_name = dict(root.named_modules())
    for mu in mus:
        d = {}
        # net.loras follows the model's module order, not `names`: pair them by name.
        by_lora_name = {"lycoris_" + n.replace(".", "_"): n for n in names}
        for lm in net.loras:
            n = by_lora_name[lm.lora_name]
            pn = te_param_name(n) if comp == "te" else n
            w, b = lyco_delta(lm, mu)
            d[(comp, pn + ".weight")] = w
            BASE_USED[(comp, pn + ".weight")] = mod_by_name[n].weight.detach().clone()
            if b is not None:
                d[(comp, pn + ".bias")] = b
                BASE_USED[(comp, pn + ".bias")] = mod_by_name[n].bias.detach().clone()
        refs[str(mu)] = d
    if algo == "full":
        # FullModule's saved `diff` is only right after apply_to() folds the base in (as in training);
        # root is a private copy here, so hooking its layers harms no other fixture.
        for lm in net.loras:
            lm.apply_to()
    # LycorisNetwork.state_dict() is empty until apply_to(), which would hook the shared base model; the
    # network's saved keys are exactly "<lora_name>.<module state_dict key>".
    sd = {f"{lm.lora_name}.{k}": v.detach().clone() for lm in net.loras for k, v in lm.state_dict().items()}
    if rename:
        sd = {rename(k): v for k, v in sd.items()}
    if dtype is not None:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": algo})}
    save_file(sd, os.path.join(OUT, name + ".safetensors"), meta)
    record(name, refs, [str(m) for m in mus], f"lycoris {algo} {kw}")


A0 = "down_blocks.1.attentions.0"
LIN = [f"{A0}.transformer_blocks.0.attn1.to_q", f"{A0}.transformer_blocks.0.attn2.to_k",
       f"{A0}.transformer_blocks.0.ff.net.2"]
LIN_MID = ["mid_block.attentions.0.transformer_blocks.0.attn1.to_v"]
LIN_UP = ["up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0"]
CONV1 = [f"{A0}.proj_in"]  # 1x1 conv in SD1
CONV3 = ["up_blocks.1.resnets.2.conv2", "down_blocks.1.resnets.0.conv1"]  # 32x32x3x3, then 64x32x3x3
TE = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.3.mlp.fc1"]


def kohya_name(k):
    return k.replace("lycoris_", "lora_unet_", 1)


def lyco_all(unet, te):
    lin = LIN + LIN_MID + LIN_UP
    lyco_fixture("lyco_locon", unet, "unet", lin + CONV1 + CONV3, "locon", mus=(1.0, 0.5), rename=kohya_name)
    lyco_fixture("lyco_locon_tucker", unet, "unet", CONV3, "locon", use_tucker=True, dim=3, alpha=1.5)
    lyco_fixture("lyco_locon_f16", unet, "unet", LIN[:2] + CONV3[:1], "locon", dtype=torch.float16,
                 rename=kohya_name)
    lyco_fixture("lyco_locon_bf16", unet, "unet", LIN[:2], "locon", dtype=torch.bfloat16)
    lyco_fixture("lyco_te", te, "te", TE, "locon", rename=lambda k: k.replace("lycoris_", "lora_te_", 1))
    lyco_fixture("lyco_loha", unet, "unet", LIN[:2] + CONV1 + CONV3[:1], "loha", mus=(1.0, -0.7))
    lyco_fixture("lyco_loha_tucker", unet, "unet", CONV3[:1], "loha", use_tucker=True)
    lyco_fixture("lyco_lokr", unet, "unet", LIN[:2] + CONV3[:1], "lokr", factor=4, dim=2)
    lyco_fixture("lyco_lokr_both", unet, "unet", LIN[:2], "lokr", factor=4, decompose_both=True, dim=2)
    lyco_fixture("lyco_lokr_full", unet, "unet", LIN[:2], "lokr", factor=8, full_matrix=True)
    lyco_fixture("lyco_lokr_tucker", unet, "unet", CONV3[:1], "lokr", factor=4, use_tucker=True, dim=2)
    for axis in (True, False):
        ax = "out" if axis else "in"
        lyco_fixture(f"lyco_dora_{ax}", unet, "unet", LIN[:2] + CONV1 + CONV3[:1], "locon", mus=(1.0, 0.5, 0.0),
                     weight_decompose=True, wd_on_out=axis, rename=kohya_name)
        lyco_fixture(f"lyco_doha_{ax}", unet, "unet", LIN[:1] + CONV3[:1], "loha", mus=(1.0, 0.5),
                     weight_decompose=True, wd_on_out=axis)
        lyco_fixture(f"lyco_dokr_{ax}", unet, "unet", LIN[:2], "lokr", mus=(1.0, 0.5), factor=4,
                     weight_decompose=True, wd_on_out=axis)
    lyco_fixture("lyco_glora", unet, "unet", LIN[:2] + CONV3[:1], "glora", mus=(1.0, 0.5))
    lyco_fixture("lyco_oft", unet, "unet", LIN[:2] + CONV3[:1], "diag-oft", mus=(1.0, 0.5), block_size=8)
    lyco_fixture("lyco_oft_constrained", unet, "unet", LIN[:2], "diag-oft", block_size=16, constraint=1e-3,
                 rescaled=True, alpha=1e-3)
    lyco_fixture("lyco_boft", unet, "unet", LIN[:1] + CONV3[:1], "boft", mus=(1.0, 0.5), block_size=4)
    lyco_fixture("lyco_boft_constrained", unet, "unet", LIN[:1], "boft", block_size=8, constraint=1e-3,
                 rescaled=True, alpha=1e-3)
    lyco_fixture("lyco_ia3", unet, "unet", LIN[:2] + CONV3[:1], "ia3", mus=(1.0, 0.5))
    lyco_fixture("lyco_full", copy.deepcopy(unet), "unet", LIN[1:2] + CONV3[:1], "full", mus=(1.0, 0.5))
    lyco_fixture("lyco_norm", unet, "unet", [f"{A0}.norm", f"{A0}.transformer_blocks.0.norm1"], "locon",
                 train_norm=True)


def extra_fixtures(unet):
    """DyLoRA file (LyCORIS dylora algo) with `dyn` truncation, and IA3 on the input axis."""
    from lycoris.modules.ia3 import IA3Module
    from lycoris.modules.locon import LoConModule
    from safetensors.torch import load_file

    mods = dict(unet.named_modules())
    names = LIN[:2]
    net = lyco_network(unet, names, "dylora", dim=4, alpha=2.0, block_size=1)
    randomise(net, "dylora")
    sd = {f"{lm.lora_name}.{k}": v.detach().clone() for lm in net.loras for k, v in lm.state_dict().items()}
    save_file(sd, os.path.join(OUT, "lyco_dylora.safetensors"), {"ss_network_module": "lycoris.kohya"})
    sd = load_file(os.path.join(OUT, "lyco_dylora.safetensors"))
    # Truncation as kohya's extract_lora_from_dylora: first r rows of down, first r columns of up, alpha
    # kept; the applied delta is then what LyCORIS's own LoCon module does with those factors.
    for dyn in (None, 2):
        d = {}
        for n in names:
            k = "lycoris_" + n.replace(".", "_")
            up, down = sd[k + ".lora_up.weight"], sd[k + ".lora_down.weight"]
            if dyn:
                up, down = up[:, :dyn], down[:dyn]
            lm = LoConModule.make_module_from_state_dict(k, mods[n], up, down, None, sd[k + ".alpha"], None)
            d[("unet", n + ".weight")] = lyco_delta(lm, 1.0)[0]
            BASE_USED[("unet", n + ".weight")] = mods[n].weight.detach().clone()
        tag = "lyco_dylora" if dyn is None else f"lyco_dylora_dyn{dyn}"
        if dyn is None:
            record(tag, {"1.0": d}, ["1.0"], "lycoris dylora file, full rank")
        else:
            MANIFEST.append(dict(name="lyco_dylora", mus=["1.0"], note="dyn=2", strengths={}, ref=tag, dyn=dyn))
            save_file({f"1.0/unet/{p}": v.contiguous() for (_, p), v in d.items()},
                      os.path.join(OUT, tag + ".ref.safetensors"))

    # IA3 with train_on_input: the weight scales input columns.
    n = LIN[1]
    lm = IA3Module("lycoris_" + n.replace(".", "_"), mods[n], 1.0, train_on_input=True)
    with torch.no_grad():
        lm.weight.copy_(rnd(lm.weight.shape, 0.2))
    sd = {f"{lm.lora_name}.{k}": v.detach().clone() for k, v in lm.state_dict().items()}
    save_file(sd, os.path.join(OUT, "lyco_ia3_input.safetensors"))
    refs = {str(mu): {("unet", n + ".weight"): lyco_delta(lm, mu)[0]} for mu in (1.0, 0.5)}
    BASE_USED[("unet", n + ".weight")] = mods[n].weight.detach().clone()
    record("lyco_ia3_input", refs, ["1.0", "0.5"], "lycoris IA3Module(train_on_input=True)")


# ---------------------------------------------------------------- LDM names

def check_ldm_map(unet):
    """Our diffusers→LDM rename, inverted by diffusers' own single-file converter, must give back the UNet."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    sd = unet.state_dict()
    m = diffusers_to_ldm_names(list(sd.keys()))
    ldm = {"model.diffusion_model." + m[k]: v for k, v in sd.items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(sd), (set(back) ^ set(sd))
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    return m


def ldm_fixture(unet, ldm_map):
    # Same LoRA as lyco_locon's kind, written with LDM block names (kohya's SDXL-style naming).
    u = {k[: -len(".weight")].replace(".", "_"): m[: -len(".weight")].replace(".", "_")
         for k, m in ldm_map.items() if k.endswith(".weight")}
    names = LIN[:2] + LIN_MID + LIN_UP + CONV1 + ["up_blocks.1.resnets.0.conv_shortcut", "conv_in",
                                                      "time_embedding.linear_1"]

    def rename(k):
        mod, rest = k.split(".", 1)
        return "lora_unet_" + u[mod[len("lycoris_"):]] + "." + rest

    lyco_fixture("kohya_ldm", unet, "unet", names, "locon", rename=rename, alpha=3.0)
    with open(os.path.join(OUT, "ldm_names.json"), "w") as f:
        json.dump({k: v for k, v in ldm_map.items() if k.endswith(".weight")}, f, indent=0, sort_keys=True)


# ---------------------------------------------------------------- peft / diffusers

def peft_fixtures(unet, te):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    import copy

    u = copy.deepcopy(unet)
    t = copy.deepcopy(te)
    ucfg = LoraConfig(r=4, lora_alpha=6, target_modules=r".*(down_blocks\.1\.attentions\.0|mid_block\.attentions\.0).*\.(to_q|to_k|to_out\.0|proj_in)$",
                      init_lora_weights=False)
    tcfg = LoraConfig(r=2, lora_alpha=3, target_modules=r".*layers\.[02]\.(self_attn\.q_proj|self_attn\.out_proj|mlp\.fc2)$", init_lora_weights=False)
    inject_adapter_in_model(ucfg, u)
    inject_adapter_in_model(tcfg, t)
    usd = get_peft_model_state_dict(u)
    tsd = get_peft_model_state_dict(t)
    # get_peft_model_state_dict gives transformers-5 flat TE names; released files carry text_model.
    tsd = {te_param_name(k): v for k, v in tsd.items()}
    StableDiffusionPipeline.save_lora_weights(
        OUT, unet_lora_layers=usd, text_encoder_lora_layers=tsd, weight_name="peft_diffusers.safetensors",
        unet_lora_adapter_metadata=ucfg.to_dict(), text_encoder_lora_adapter_metadata=tcfg.to_dict())

    # References: merge, subtract base.
    refs = {}
    from peft.tuners.lora import LoraLayer

    for comp, model, base in (("unet", u, unet), ("te", t, te)):
        bsd = dict(base.named_parameters())
        for name, mod in model.named_modules():
            if isinstance(mod, LoraLayer):
                before = mod.get_base_layer().weight.detach().clone()
                mod.merge()
                delta = mod.get_base_layer().weight.detach() - before
                pn = name + ".weight"
                key = te_param_name(pn) if comp == "te" else pn
                refs[(comp, key)] = delta
                BASE_USED[(comp, key)] = bsd[pn].detach().clone()
    record("peft_diffusers", {"1.0": refs}, ["1.0"], "peft LoraConfig + diffusers save_lora_weights")

    # Old diffusers `lora.down`/`lora.up` names (no alpha stored: only valid with alpha == r, so rescale B).
    full = {"unet." + k: v for k, v in usd.items()}
    full.update({"text_encoder." + k: v for k, v in tsd.items()})
    scaled = {}
    for k, v in full.items():
        if "lora_B" in k:
            v = v * ((6 / 4) if k.startswith("unet.") else (3 / 2))
        scaled[k] = v
    old = convert_state_dict_to_diffusers(scaled)
    save_file({k: v.contiguous() for k, v in old.items()}, os.path.join(OUT, "diffusers_old.safetensors"))
    record("diffusers_old", {"1.0": refs}, ["1.0"], "convert_state_dict_to_diffusers (alpha folded into B)",
           ref_file="peft_diffusers")

    # kohya names by diffusers' own converter. It stores alpha = rank (int64), so fold alpha/r into B as
    # diffusers' own users must; the TE comes out as lora_te1_ (its SDXL spelling).
    fixed = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(scaled).items()}
    save_file(fixed, os.path.join(OUT, "kohya_from_peft.safetensors"),
              {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "6",
               "ss_base_model_version": "sd_v1",
               "ss_tag_frequency": json.dumps({"10_tinychar": {"tinychar": 12, "red hat": 5, "smile": 7}}),
               "modelspec.trigger_phrase": "tinychar, red hat"})
    record("kohya_from_peft", {"1.0": refs}, ["1.0"], "convert_state_dict_to_kohya of the peft adapter",
           ref_file="peft_diffusers")
    return refs


# ---------------------------------------------------------------- bad files

def bad_files():
    import struct

    good = {"lora_unet_x.lora_down.weight": torch.ones(2, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 2)}
    p = os.path.join(OUT, "bad_truncated.safetensors")
    save_file(good, p)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:-8])

    hdr = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    open(os.path.join(OUT, "bad_header_past_end.safetensors"), "wb").write(
        struct.pack("<Q", len(hdr) + 1000) + hdr + b"\0" * 16)

    hdr = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}).encode()
    open(os.path.join(OUT, "bad_overlap.safetensors"), "wb").write(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 24)

    hdr = json.dumps({"__metadata__": {"ok": "yes", "n": 3, "nested": {"x": 1}},
                      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight":
                          {"dtype": "F32", "shape": [1, 64], "data_offsets": [0, 256]},
                      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight":
                          {"dtype": "F32", "shape": [64, 1], "data_offsets": [256, 512]}}).encode()
    body = torch.cat([torch.full((64,), float("nan")), torch.full((64,), 0.01)]).numpy().tobytes()
    open(os.path.join(OUT, "lenient_meta_nan.safetensors"), "wb").write(struct.pack("<Q", len(hdr)) + hdr + body)

    torch.save(good, os.path.join(OUT, "bad_pickle.pt"))

    # SD1.5-shaped LoRA (context 768): wrong family for the tiny model.
    sd1 = {}
    for blk in ("down_blocks_1_attentions_0", "mid_block_attentions_0"):
        m = f"lora_unet_{blk}_transformer_blocks_0_attn2_to_k"
        sd1[m + ".lora_down.weight"] = rnd((4, 768))
        sd1[m + ".lora_up.weight"] = rnd((64, 4))
        sd1[m + ".alpha"] = torch.tensor(4.0)
    save_file(sd1, os.path.join(OUT, "wrong_family_sd1.safetensors"), {"ss_base_model_version": "sd_v1"})

    # Right name, wrong shape (rank mismatch between up and target rows).
    m = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({m + ".lora_down.weight": rnd((4, 64)), m + ".lora_up.weight": rnd((320, 4))},
              os.path.join(OUT, "mismatch_shape.safetensors"))
    with open(os.path.join(OUT, "kohya_from_peft.civitai.info"), "w") as f:
        json.dump({"trainedWords": ["tiny trigger", "red hat"], "baseModel": "SD 1.5"}, f)


# ---------------------------------------------------------------- SDXL

XA = "down_blocks.1.attentions"
XL_LIN = [f"{XA}.0.transformer_blocks.1.attn2.to_k", f"{XA}.1.transformer_blocks.0.attn1.to_q",
          f"{XA}.0.proj_in", "mid_block.attentions.0.transformer_blocks.1.ff.net.2",
          "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_v"]
XL_CONV = ["down_blocks.0.resnets.1.conv1", "down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv",
           "up_blocks.1.resnets.0.conv_shortcut"]
XL_TOP = ["add_embedding.linear_1", "time_embedding.linear_2"]
XL_TE1 = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.4.mlp.fc2"]
XL_TE2 = ["text_model.encoder.layers.1.self_attn.v_proj", "text_model.encoder.layers.3.mlp.fc1"]


def build_sdxl_base():
    unet, te, te2, _, _ = tiny_configs.build_sdxl()
    with torch.no_grad():
        for m in (unet, te, te2):
            for p in m.parameters():
                p.copy_(p.half().float())
    return unet, te, te2


def ldm_rename(ldm_map, prefix="lora_unet_"):
    """LyCORIS key `lycoris_<diffusers_path>.x` -> kohya's SDXL key `lora_unet_<ldm_path>.x`."""
    u = {k[: -len(".weight")].replace(".", "_"): m[: -len(".weight")].replace(".", "_")
         for k, m in ldm_map.items() if k.endswith(".weight")}

    def rename(k):
        mod, rest = k.split(".", 1)
        return prefix + u[mod[len("lycoris_"):]] + "." + rest

    return rename


def sdxl_fixtures():
    unet, te, te2 = build_sdxl_base()
    ldm_map = check_ldm_map(unet)
    to_ldm = ldm_rename(ldm_map)
    with open(os.path.join(OUT, "ldm_names.json"), "w") as f:
        json.dump({k: v for k, v in ldm_map.items() if k.endswith(".weight")}, f, indent=0, sort_keys=True)
    # kohya's SDXL naming: UNet by LDM block names, te1/te2 with the `text_model` level.
    lyco_fixture("xl_kohya_locon", unet, "unet", XL_LIN + XL_CONV + XL_TOP, "locon", mus=(1.0, 0.5),
                 rename=to_ldm, alpha=3.0)
    lyco_fixture("xl_te1_locon", te, "te", XL_TE1, "locon",
                 rename=lambda k: k.replace("lycoris_", "lora_te1_text_model_", 1))
    lyco_fixture("xl_te2_locon", te2, "te2", XL_TE2, "locon", rename=lambda k: k.replace("lycoris_", "lora_te2_", 1))
    lyco_fixture("xl_loha", unet, "unet", XL_LIN[:2] + XL_CONV[:1], "loha", rename=to_ldm)
    lyco_fixture("xl_lokr", unet, "unet", XL_LIN[:2] + XL_CONV[:1], "lokr", factor=4, dim=2)
    sdxl_peft(unet, te, te2)


def sdxl_peft(unet, te, te2):
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    u, t, t2 = copy.deepcopy(unet), copy.deepcopy(te), copy.deepcopy(te2)
    ucfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights=False,
                      target_modules=r".*(down_blocks\.1\.attentions\.1|mid_block\.attentions\.0).*\.(to_q|to_k|to_out\.0|proj_in)$")
    tcfg = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False,
                      target_modules=r".*layers\.[02]\.(self_attn\.q_proj|mlp\.fc2)$")
    t2cfg = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                       target_modules=r".*layers\.[14]\.(self_attn\.k_proj|self_attn\.out_proj|mlp\.fc1)$")
    for cfg, m in ((ucfg, u), (tcfg, t), (t2cfg, t2)):
        inject_adapter_in_model(cfg, m)
    usd = get_peft_model_state_dict(u)
    tsd = {te_param_name(k): v for k, v in get_peft_model_state_dict(t).items()}
    t2sd = get_peft_model_state_dict(t2)
    StableDiffusionXLPipeline.save_lora_weights(
        OUT, unet_lora_layers=usd, text_encoder_lora_layers=tsd, text_encoder_2_lora_layers=t2sd,
        weight_name="xl_peft_diffusers.safetensors", unet_lora_adapter_metadata=ucfg.to_dict(),
        text_encoder_lora_adapter_metadata=tcfg.to_dict(), text_encoder_2_lora_adapter_metadata=t2cfg.to_dict())
    refs = {}
    for comp, model, base in (("unet", u, unet), ("te", t, te), ("te2", t2, te2)):
        bsd = dict(base.named_parameters())
        for name, mod in model.named_modules():
            if isinstance(mod, LoraLayer):
                before = mod.get_base_layer().weight.detach().clone()
                mod.merge()
                pn = name + ".weight"
                key = te_param_name(pn) if comp == "te" else pn
                refs[(comp, key)] = mod.get_base_layer().weight.detach() - before
                BASE_USED[(comp, key)] = bsd[pn].detach().clone()
    record("xl_peft_diffusers", {"1.0": refs}, ["1.0"], "peft + StableDiffusionXLPipeline.save_lora_weights")

    # diffusers' kohya converter (alpha stored as the rank: fold alpha/r into B first).
    full = {"unet." + k: v for k, v in usd.items()}
    full.update({"text_encoder." + k: v for k, v in tsd.items()})
    full.update({"text_encoder_2." + k: v for k, v in t2sd.items()})
    scale = {"unet.": 6 / 4, "text_encoder.": 3 / 2, "text_encoder_2.": 4 / 2}
    scaled = {}
    for k, v in full.items():
        if "lora_B" in k:
            v = v * scale[max((p for p in scale if k.startswith(p)), key=len)]
        scaled[k] = v
    kohya = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(scaled).items()}
    assert any(k.startswith("lora_te2_") for k in kohya), sorted(kohya)[:5]
    save_file(kohya, os.path.join(OUT, "xl_kohya_from_peft.safetensors"),
              {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"})
    record("xl_kohya_from_peft", {"1.0": refs}, ["1.0"], "convert_state_dict_to_kohya of the SDXL peft adapter",
           ref_file="xl_peft_diffusers")


def main_sdxl():
    global OUT
    OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "lora-sdxl")
    os.makedirs(OUT, exist_ok=True)
    sdxl_fixtures()
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)


def main():
    if "--sdxl" in sys.argv[1:]:
        return main_sdxl()
    os.makedirs(OUT, exist_ok=True)
    unet, te = build_base()
    write_params(unet, te)
    ldm_map = check_ldm_map(unet)
    lyco_all(unet, te)
    extra_fixtures(unet)
    ldm_fixture(unet, ldm_map)
    peft_fixtures(unet, te)
    bad_files()
    save_file({f"{c}/{p}": v.half().contiguous() for (c, p), v in sorted(BASE_USED.items())},
              os.path.join(OUT, "base.safetensors"))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)


if __name__ == "__main__":
    main()
