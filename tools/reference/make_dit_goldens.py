#!/usr/bin/python3
"""Writes the DiT golden files under tests/data/dit/ from the PyTorch reference (hunyuan_dit.py).

Run:  /usr/bin/python3 tools/reference/make_dit_goldens.py [--out DIR] [--weights-dtype F32|BF16]

Deterministic (fixed seeds, CPU, fp32). See tools/reference/README.md for what each file holds. Every scalar
a test needs (timesteps, guidance, thresholds, windows, tile, shift, steps) is in the io file's
__metadata__ as JSON strings; floats are written as the exact decimal of their fp32 value.
"""

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hunyuan_dit as hd  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
GUIDANCE = 6016.0  # embedded cfg 6.0: bf16(6.0 * 1000) (spec 6)
SHIFT = 7.0
TIMESTEP = 873.4  # the single-forward timestep (rounded to fp32 when stored)

# ---------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------

# Config A: spec 9's tiny transformer (diffusers test get_init_dict), with a T > 1 latent.
TINY = hd.HunyuanVideoConfig(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
    num_single_layers=1, num_refiner_layers=1, mlp_ratio=4.0, patch_size=1, patch_size_t=1,
    guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_theta=256.0, rope_axes_dim=(2, 4, 4),
)
# Config B: real-model patch (1,2,2), head dim 64, 2 dual + 2 single + 1 refiner.
SMALL = hd.HunyuanVideoConfig(
    in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=64, num_layers=2,
    num_single_layers=2, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
    guidance_embeds=True, text_embed_dim=64, pooled_projection_dim=32, rope_theta=256.0, rope_axes_dim=(16, 24, 24),
)

CASES = [
    dict(name="tiny", cfg=TINY, latent=(1, 4, 3, 8, 8), text_slots=12, text_len=9, weight_seed=101, input_seed=201),
    dict(name="small", cfg=SMALL, latent=(1, 16, 4, 32, 32), text_slots=16, text_len=11, weight_seed=102,
         input_seed=202),
]

# STA settings for config B (canvas 4 x 16 x 16 tokens).
STA_TILE = (1, 8, 8)  # 64 tokens, grid 4 x 2 x 2
STA_HEAD_WINDOWS = [(3, 1, 1), (1, 2, 2)]  # per head, every layer
# Per layer (dual 0, dual 1, single 0, single 1) x head. Covers: an even window (2 on an axis of 4 tiles =
# r 1 = 3 tiles, the formula as written), windows >= the grid (whole axis), 1-tile windows, full = dense.
STA_MIXED_WINDOWS = {
    0: [(3, 1, 1), (1, 2, 2)],
    1: [(1, 1, 1), (4, 2, 2)],
    2: [(2, 1, 2), (5, 1, 1)],
    3: [(1, 2, 1), (3, 1, 2)],
}
STA_PAD_TILE = (3, 8, 8)  # 192 tokens; T = 4 is padded to 6: grid 2 x 2 x 2, the last t-tile holds 1 frame
STA_PAD_WINDOWS = [(1, 1, 1), (1, 2, 1)]
SAMPLER_STEPS = 3
TEACACHE_STEPS = 6
CFG_SCALE = 4.5  # true-CFG run (config A only)


def f32(v: float) -> float:
    """The exact value of v rounded to fp32, as a Python float (its repr is a decimal that round-trips)."""
    return float(torch.tensor(v, dtype=torch.float32).item())


def stats(t: torch.Tensor) -> dict:
    t = t.double()
    return {"std": round(t.std().item(), 6), "mean_abs": round(t.abs().mean().item(), 6),
            "max_abs": round(t.abs().max().item(), 6)}


def windows_dict(fn, num_layers, heads):
    return {f"{l}_{h}": list(fn(l, h)) for l in range(num_layers) for h in range(heads)}


# ---------------------------------------------------------------------------------------------------------
# Self-checks of the reference against the spec's own statements (fast; run before writing anything)
# ---------------------------------------------------------------------------------------------------------


def self_checks():
    # Spec 1: parameter count and tensor count of the 13B config.
    full = hd.HunyuanVideoConfig()
    n = hd.param_count(full)
    assert n == 12_821_012_544, n
    bd = hd.param_breakdown(full)
    assert bd["tensors"] == 1264, bd
    assert bd["transformer_blocks"] == 6_796_625_920 and bd["single_transformer_blocks"] == 5_663_672_320, bd
    assert bd["context_embedder"] == 309_175_296 and bd["time_text_embed"] == 32_262_144, bd
    assert bd["x_embedder"] == 199_680 and bd["norm_out"] == 18_880_512 and bd["proj_out"] == 196_672, bd

    # Spec 2.0: sinusoid = [cos(t f_k) ..., sin(t f_k) ...].
    t = torch.tensor([0.0, 873.4])
    e = hd.timestep_sinusoid(t)
    assert e.shape == (2, 256) and torch.allclose(e[0, :128], torch.ones(128)) and torch.all(e[0, 128:] == 0)
    f5 = math.exp(-math.log(10000.0) * 5 / 128)
    assert abs(e[1, 5].item() - math.cos(873.4 * f5)) < 1e-3 and abs(e[1, 133].item() - math.sin(873.4 * f5)) < 1e-3

    # Spec 2.2 / 2.8: patch embedding equals Conv3d; unpatchify places [C][pt][ph][pw] at (t*pt+ot, ...).
    cfg = hd.HunyuanVideoConfig(in_channels=3, out_channels=3, num_attention_heads=1, attention_head_dim=8,
                                num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
                                patch_size_t=2, text_embed_dim=4, pooled_projection_dim=4, rope_axes_dim=(2, 2, 4))
    m = hd.HunyuanVideoTransformer(cfg, hd.init_random(cfg, 0))
    x = torch.randn(2, 3, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    tok, canvas = m.patch_embed(x)
    ref = torch.nn.functional.conv3d(x, m.p["x_embedder.proj.weight"], m.p["x_embedder.proj.bias"], stride=(2, 2, 2))
    assert canvas == (2, 3, 4) and torch.allclose(tok, ref.flatten(2).transpose(1, 2), atol=1e-5)
    y = torch.randn(2, 24, 3 * 8)
    u = m.unpatchify(y, (2, 3, 4, 6, 8))
    for (b, n_, f) in [(0, 0, 0), (1, 17, 13), (0, 23, 23), (1, 5, 9)]:
        tt, hh, ww = n_ // 12, (n_ // 4) % 3, n_ % 4
        c, ot, oh, ow = f // 8, (f // 4) % 2, (f // 2) % 2, f % 2
        assert u[b, c, tt * 2 + ot, hh * 2 + oh, ww * 2 + ow] == y[b, n_, f]

    # Spec 2.5: RoPE = complex multiplication on (x[2j], x[2j+1]); frequencies; axis split.
    cos, sin = hd.rope_tables(SMALL, (4, 16, 16))
    assert cos.shape == (1024, 32)
    n_ = (2 * 16 + 5) * 16 + 7  # token (t=2, h=5, w=7)
    ang = torch.atan2(sin[n_], cos[n_]).double()
    def same_angle(a_, b_):
        return abs(math.remainder(a_ - b_, 2 * math.pi)) < 1e-5
    assert same_angle(ang[1].item(), 2 * 0.5)  # t pair 1: freq 2^-1, position 2
    assert same_angle(ang[8].item(), 5.0)  # h pair 0: freq 1, position 5
    assert same_angle(ang[21].item(), 7 * 256 ** (-2 * 1 / 24))  # w pair 1 (pairs 20..31 carry w)
    q = torch.randn(1, 2, 1024, 64)
    zc = torch.view_as_complex(q.reshape(1, 2, 1024, 32, 2).contiguous())
    rot = torch.view_as_real(zc * torch.complex(cos, sin)).reshape(q.shape)
    assert torch.allclose(hd.apply_rope(q, cos, sin), rot, atol=1e-5)

    # sta.md 3: counts and the spec's sparsity examples; padded canvas; brute-force per-token check.
    def visible_tiles(grid, win):
        return sum(hd.sta_visible((a, b, c), (d, e_, f_), grid, win)
                   for a in range(grid[0]) for b in range(grid[1]) for c in range(grid[2])
                   for d in range(grid[0]) for e_ in range(grid[1]) for f_ in range(grid[2]))
    g = (5, 6, 10)
    assert visible_tiles(g, (3, 3, 3)) == 27 * 300
    assert abs(1 - visible_tiles(g, (5, 5, 5)) / 300 ** 2 - 0.5833) < 1e-4
    canvas, tile, win = (5, 7, 6), (2, 3, 4), (1, 3, 2)  # grid 3 x 3 x 2, padded on every axis
    mk = hd.sta_image_mask(canvas, tile, win)
    grid = hd.sta_grid(canvas, tile)
    coords = [(t_, h_, w_) for t_ in range(5) for h_ in range(7) for w_ in range(6)]
    gen = torch.Generator().manual_seed(3)
    for _ in range(3000):
        i, j = torch.randint(0, len(coords), (2,), generator=gen).tolist()
        qt = [coords[i][d] // tile[d] for d in range(3)]
        kt = [coords[j][d] // tile[d] for d in range(3)]
        assert bool(mk[i, j]) == hd.sta_visible(qt, kt, grid, win)

    # STA with windows >= the grid is exactly dense attention (same mask).
    sta_full = hd.StaAttention(STA_TILE, [(4, 2, 2), (9, 9, 9)])
    dense = hd.DenseAttention()
    a = sta_full.mask(0, 2, (4, 16, 16), 16, [11])
    b = dense.mask(0, 2, (4, 16, 16), 16, [11]).expand_as(a)
    assert torch.equal(a, b)

    # Spec 2.3 / 2.4: padded text slots are invisible. The output with 12 slots (9 valid, junk in the padding)
    # equals the output with the text truncated to its 9 valid slots (all-ones mask), dense and STA.
    m = hd.HunyuanVideoTransformer(TINY, hd.init_random(TINY, 7))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 3, 8, 8, generator=gen)
    text = torch.randn(1, 12, 16, generator=gen)
    pooled = torch.randn(1, 8, generator=gen)
    mask = torch.zeros(1, 12)
    mask[:, :9] = 1
    tt, gg = torch.tensor([500.0]), torch.tensor([GUIDANCE])
    for attn in (hd.DenseAttention(), hd.StaAttention((1, 2, 4), [(1, 3, 1), (3, 1, 1)])):
        full = m.forward(x, tt, text, mask, pooled, gg, attention=attn)
        trunc = m.forward(x, tt, text[:, :9], torch.ones(1, 9), pooled, gg, attention=attn)
        assert torch.allclose(full, trunc, atol=1e-5), (full - trunc).abs().max()

    # Spec 6: sigma schedule example (shift 7, N = 50).
    sig, ts = hd.flow_match_sigmas(50, 7.0)
    assert abs(sig[1].item() - 0.997093) < 1e-6 and abs(sig[25].item() - 0.875) < 1e-7
    assert abs(sig[49].item() - 0.125) < 1e-7 and sig[50].item() == 0.0 and ts[0].item() == 1000.0

    # Spec 6: bf16(6.0 * 1000) = 6016.
    assert (torch.tensor(6.0, dtype=torch.bfloat16) * 1000).item() == GUIDANCE

    # Spec 7: the polynomial stays positive on [0, 1], so threshold 0 computes every step.
    assert min(hd.teacache_poly(i / 1000) for i in range(1001)) > 0


# ---------------------------------------------------------------------------------------------------------
# Golden generation
# ---------------------------------------------------------------------------------------------------------


def make_inputs(case):
    cfg = case["cfg"]
    gen = torch.Generator().manual_seed(case["input_seed"])
    L, n_valid = case["text_slots"], case["text_len"]
    x = torch.randn(case["latent"], generator=gen)
    text = torch.randn(1, L, cfg.text_embed_dim, generator=gen)  # padded slots hold non-zero junk on purpose
    mask = torch.zeros(1, L)
    mask[:, :n_valid] = 1.0
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
    noise = torch.randn(case["latent"], generator=gen)
    return dict(x=x, timestep=torch.tensor([TIMESTEP], dtype=torch.float32), text=text, text_mask=mask,
                pooled=pooled, guidance=torch.tensor([GUIDANCE], dtype=torch.float32)), noise, gen


def run_case(case, out_root, weights_dtype):
    t_start = time.time()
    cfg, name = case["cfg"], case["name"]
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    params = hd.init_random(cfg, case["weight_seed"])
    model = hd.HunyuanVideoTransformer(cfg, params)
    inputs, noise, gen = make_inputs(case)
    args = (inputs["x"], inputs["timestep"], inputs["text"], inputs["text_mask"], inputs["pooled"], inputs["guidance"])
    L, n_valid = case["text_slots"], case["text_len"]
    B, C, T, H, W = case["latent"]
    canvas = (T // cfg.patch_size_t, H // cfg.patch_size, W // cfg.patch_size)
    n_img = canvas[0] * canvas[1] * canvas[2]
    heads, n_layers = cfg.num_attention_heads, cfg.num_layers + cfg.num_single_layers

    tensors = OrderedDict()
    desc = OrderedDict()
    meta = OrderedDict()

    def put(key, t, what, dtype=torch.float32):
        tensors[key] = t.detach().to(dtype).contiguous()
        desc[key] = what

    # ---- inputs ----
    put("x", inputs["x"], "latent input [B, C, T, H, W]")
    put("timestep", inputs["timestep"], "timestep [B], 0..1000 scale")
    put("text", inputs["text"], "LLM text states [B, L, text_embed_dim]; padded slots hold junk")
    put("text_mask", inputs["text_mask"], "text mask [B, L], 1 = valid (right-padded), F32 0/1")
    put("pooled", inputs["pooled"], "pooled CLIP vector [B, pooled_projection_dim]")
    put("guidance", inputs["guidance"], "embedded guidance [B] (6016 = bf16(6.0*1000))")
    meta["inputs"] = {"timestep": f32(TIMESTEP), "guidance": GUIDANCE, "text_slots": L, "text_len": n_valid,
                      "latent_shape": list(case["latent"]), "canvas": list(canvas), "n_img": n_img}

    # ---- dense forward with intermediates ----
    cap = {}
    dense_out = model.forward(*args, capture=cap)
    put("t_sinusoid", cap["t_sinusoid"], "sinusoid(timestep) [B, 256]: cos then sin, fp32")
    put("vec", cap["vec"], "conditioning vector vec (diffusers temb) [B, D]")
    put("txt_refined", cap["txt_refined"],
        "token refiner output [B, L, D]; padded rows follow the column-0 rule (compare valid rows at least)")
    if name == "tiny":
        put("rope_cos", cap["rope_cos"], "RoPE cos [N_img, head_dim/2], pair j of raster token n")
        put("rope_sin", cap["rope_sin"], "RoPE sin [N_img, head_dim/2]")
    put("dual0_in_img", cap["dual0_in_img"], "image stream into dual block 0 = patch embedding [B, N_img, D]")
    put("dual0_in_txt", cap["dual0_in_txt"], "text stream into dual block 0 (= txt_refined) [B, L, D]")
    put("dual0_out_img", cap["dual0_out_img"], "image stream after dual block 0 [B, N_img, D]")
    put("dual0_out_txt", cap["dual0_out_txt"], "text stream after dual block 0 [B, L, D]; valid rows only matter")
    put("single0_in", cap["single0_in"], "[img; txt] into single block 0 [B, N_img + L, D]")
    put("single0_out", cap["single0_out"], "[img; txt] after single block 0 [B, N_img + L, D]")
    put("dense_out", dense_out, "full forward, dense attention: velocity [B, C, T, H, W]")
    std = dense_out.std().item()
    assert 0.3 < std < 5.0 and torch.isfinite(dense_out).all(), f"degenerate output std {std}"

    # fp32 reference vs an fp64 evaluation of the same graph: the reference's own rounding error.
    out64 = hd.HunyuanVideoTransformer(cfg, params, dtype=torch.float64).forward(*args)
    meta["dense"] = {"output": "dense_out", "attention": "dense",
                     "fp32_vs_fp64_max_abs_diff": (dense_out.double() - out64).abs().max().item(),
                     "fp32_vs_fp64_mean_abs_diff": (dense_out.double() - out64).abs().mean().item()}

    # ---- STA forwards (config B) ----
    if name == "small":
        sta_meta = OrderedDict()
        variants = [
            ("sta_out", STA_TILE, lambda l, h: STA_HEAD_WINDOWS[h], "per-head windows, same for every layer"),
            ("sta_mixed_out", STA_TILE, lambda l, h: STA_MIXED_WINDOWS[l][h], "per-layer, per-head windows"),
            ("sta_pad_out", STA_PAD_TILE, lambda l, h: STA_PAD_WINDOWS[h], "tile not dividing T: grid padded"),
        ]
        for key, tile, fn, what in variants:
            attn = hd.StaAttention(tile, fn)
            o = model.forward(*args, attention=attn)
            put(key, o, f"full forward, STA attention ({what}) [B, C, T, H, W]")
            sta_meta[key] = {"tile": list(tile), "grid": list(hd.sta_grid(canvas, tile)),
                             "windows": windows_dict(fn, n_layers, heads),
                             "rel_diff_vs_dense": ((o - dense_out).norm() / dense_out.norm()).item()}
        meta["sta"] = sta_meta

    # ---- 3-step sampler (dense) ----
    put("noise", noise, "initial noise for the sampler / TeaCache runs [B, C, T, H, W]")
    res = hd.sample(model, noise, inputs["text"], inputs["text_mask"], inputs["pooled"], inputs["guidance"],
                    SAMPLER_STEPS, SHIFT)
    put("sampler_sigmas", res.sigmas, f"sigmas [N+1] (shift {SHIFT}, N {SAMPLER_STEPS}), fp32")
    put("sampler_timesteps", res.timesteps, "timesteps t_i = sigma_i * 1000 [N], fp32")
    put("sampler_latents", torch.stack(res.latents), "latents after each Euler step [N, B, C, T, H, W]")
    meta["sampler"] = {"num_steps": SAMPLER_STEPS, "shift": SHIFT, "guidance": GUIDANCE, "attention": "dense",
                       "sigmas": res.sigmas.tolist(), "timesteps": res.timesteps.tolist(),
                       "noise": "noise", "latents": "sampler_latents"}

    # ---- true CFG (config A): two forwards per step ----
    if name == "tiny":
        neg_text = torch.randn(1, L, cfg.text_embed_dim, generator=gen)
        neg_mask = torch.zeros(1, L)
        neg_mask[:, :5] = 1.0
        neg_pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
        neg = {"text": neg_text, "text_mask": neg_mask, "pooled": neg_pooled}
        res_cfg = hd.sample(model, noise, inputs["text"], inputs["text_mask"], inputs["pooled"], inputs["guidance"],
                            2, SHIFT, true_cfg_scale=CFG_SCALE, negative=neg)
        put("cfg_neg_text", neg_text, "negative-prompt text states [B, L, text_embed_dim]")
        put("cfg_neg_text_mask", neg_mask, "negative text mask [B, L] (5 valid)")
        put("cfg_neg_pooled", neg_pooled, "negative pooled vector [B, pooled_projection_dim]")
        put("cfg_latents", torch.stack(res_cfg.latents), "true-CFG sampler latents after each step [N, B, C, T, H, W]")
        meta["true_cfg"] = {"num_steps": 2, "shift": SHIFT, "guidance": GUIDANCE, "true_cfg_scale": CFG_SCALE,
                            "rule": "v = v_uncond + s * (v_cond - v_uncond); the same guidance embedding for both",
                            "sigmas": res_cfg.sigmas.tolist(), "timesteps": res_cfg.timesteps.tolist(),
                            "noise": "noise", "latents": "cfg_latents"}

    # ---- STA sampler with per-step windows (config B): step 0 dense (full windows), then mixed ----
    if name == "small":
        grid = hd.sta_grid(canvas, STA_TILE)

        def step_fn(step, l, h):
            return tuple(grid) if step == 0 else STA_MIXED_WINDOWS[l][h]

        attn_for_step = lambda s: hd.StaAttention(STA_TILE, lambda l, h: step_fn(s, l, h))  # noqa: E731
        res_sta = hd.sample(model, noise, inputs["text"], inputs["text_mask"], inputs["pooled"], inputs["guidance"],
                            SAMPLER_STEPS, SHIFT, attention_for_step=attn_for_step)
        put("sta_sampler_latents", res_sta.latents[-1], "final latents of the per-step-window STA sampler run")
        meta["sta_sampler"] = {
            "num_steps": SAMPLER_STEPS, "shift": SHIFT, "guidance": GUIDANCE, "tile": list(STA_TILE),
            "windows": {f"{s}_{l}_{h}": list(step_fn(s, l, h))
                        for s in range(SAMPLER_STEPS) for l in range(n_layers) for h in range(heads)},
            "note": "step 0 uses windows = the grid (identical to dense attention)",
            "noise": "noise", "latents": "sta_sampler_latents"}

    # ---- TeaCache (config B) ----
    if name == "small":
        meta["teacache"] = teacache_goldens(model, noise, inputs, put)

    # ---- bf16 variant of the dense forward (config B) ----
    if name == "small":
        m16 = hd.HunyuanVideoTransformer(cfg, params, act_dtype=torch.bfloat16)
        o16 = m16.forward(*args)
        put("dense_out_bf16", o16, "dense forward, bf16 emulation (bf16 weights/activations, fp32 islands)",
            dtype=torch.bfloat16)
        d = (o16.double() - out64)
        meta["bf16"] = {"output": "dense_out_bf16", "reference": "dense_out",
                        "inputs_rounded_to_bf16": ["x", "text", "pooled"],
                        "fp32_inputs": ["timestep", "guidance"],
                        "vs_fp64_max_abs_diff": d.abs().max().item(), "vs_fp64_mean_abs_diff": d.abs().mean().item(),
                        "vs_fp32_max_abs_diff": (o16 - dense_out).abs().max().item(),
                        "vs_fp32_mean_abs_diff": (o16 - dense_out).abs().mean().item()}

    # ---- write ----
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_json_dict(), f, indent=2)
        f.write("\n")
    wdt = torch.bfloat16 if weights_dtype == "BF16" else torch.float32
    save_file(OrderedDict((k, v.to(wdt)) for k, v in params.items()), os.path.join(out_dir, "transformer.safetensors"),
              metadata={"format": "pt", "generator": "tools/reference/make_dit_goldens.py",
                        "init": f"hunyuan_dit.init_random(seed={case['weight_seed']}); values exactly bf16"})
    meta_str = OrderedDict(config=name, description=json.dumps(desc))
    for k, v in meta.items():
        meta_str[k] = json.dumps(v)
    io_path = os.path.join(out_dir, "io.safetensors")
    save_file(tensors, io_path, metadata=meta_str)

    # Round trip: the files read back bit-exactly.
    back, back_meta = load_file(io_path)
    assert list(back) == list(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert json.loads(back_meta["inputs"])["text_len"] == n_valid
    wback, _ = load_file(os.path.join(out_dir, "transformer.safetensors"))
    assert all(torch.equal(wback[k].float(), params[k]) for k in params)

    summary = OrderedDict(
        config=name, params=hd.param_count(cfg), seconds=round(time.time() - t_start, 2),
        files={fn: os.path.getsize(os.path.join(out_dir, fn)) for fn in sorted(os.listdir(out_dir))},
        tensors=OrderedDict((k, list(v.shape)) for k, v in tensors.items()),
        output_stats=OrderedDict((k, stats(tensors[k].float())) for k in tensors
                                 if k.endswith("_out") or k.endswith("latents") or k.endswith("_bf16")),
        dense=meta["dense"],
    )
    for k in ("sta", "bf16", "teacache"):
        if k in meta:
            summary[k] = ({kk: {"rel_diff_vs_dense": round(vv["rel_diff_vs_dense"], 4)} for kk, vv in meta[k].items()}
                          if k == "sta" else meta[k] if k == "bf16" else
                          {"runs": [{kk: r[kk] for kk in ("thresh", "decisions")} for r in meta[k]["runs"]]})
    return summary


def teacache_goldens(model, noise, inputs, put):
    """Spec 7 runs: threshold 0 (everything computed) and a threshold chosen so that a middle step is skipped
    and a later middle step computed, with a wide margin between every compared accumulator and the
    threshold (so the decisions are robust to the C++ implementation's rounding)."""
    N = TEACACHE_STEPS
    a = (noise, inputs["text"], inputs["text_mask"], inputs["pooled"], inputs["guidance"], N, SHIFT)
    plain = hd.sample(model, *a)
    r0 = hd.sample(model, *a, teacache_thresh=0.0)
    assert all(r0.decisions), r0.decisions
    assert torch.equal(r0.latents[-1], plain.latents[-1])
    f1 = r0.accs[1]  # acc compared at step 1 is the same for every threshold (step 0 always computes)

    # Candidates: multiples of the first compared accumulator. Keep those with a skipped and a computed middle
    # step and a relative margin >= 15% at every comparison; prefer the most skips, then the widest margin.
    best = None
    for mult in (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0):
        thresh = f32(f1 * mult)
        r = hd.sample(model, *a, teacache_thresh=thresh)
        mid = r.decisions[1:N - 1]  # steps 1..N-2 (0 and N-1 always compute)
        if all(mid) or not any(mid):
            continue
        margin = min(abs(r.accs[i] - thresh) / thresh for i in range(1, N - 1))
        if margin < 0.15:
            continue
        score = (mid.count(False), margin)
        if best is None or score > best[0]:
            best = (score, thresh, r)
    assert best is not None, "no threshold gave a skipped and a computed middle step with a safe margin"
    (_, margin), thresh, r = best

    put("teacache_sigmas", r0.sigmas, f"sigmas [N+1] of the TeaCache runs (shift {SHIFT}, N {N})")
    put("teacache_timesteps", r0.timesteps, "timesteps [N] of the TeaCache runs")
    put("teacache_thresh0_decisions", torch.tensor([float(d) for d in r0.decisions]),
        "TeaCache threshold 0: 1 = blocks computed, 0 = skipped, per step [N]")
    put("teacache_thresh0_latents", r0.latents[-1], "TeaCache threshold 0: final latents (= plain sampler)")
    put("teacache_skip_decisions", torch.tensor([float(d) for d in r.decisions]),
        "TeaCache chosen threshold: 1 = computed, 0 = skipped, per step [N]")
    put("teacache_skip_rel", torch.tensor([0.0 if math.isnan(v) else v for v in r.rels]),
        "TeaCache chosen threshold: rel L1 indicator per step [N] (0 at step 0, where it is undefined)")
    put("teacache_skip_acc", torch.tensor(r.accs),
        "TeaCache chosen threshold: accumulator compared with the threshold per step [N] (0 = always-compute step)")
    put("teacache_skip_latents", r.latents[-1], "TeaCache chosen threshold: final latents")
    return {
        "num_steps": N, "shift": SHIFT, "guidance": GUIDANCE, "coefficients": hd.TEACACHE_HUNYUAN_COEFFS,
        "sigmas": r0.sigmas.tolist(), "timesteps": r0.timesteps.tolist(), "noise": "noise",
        "runs": [
            {"thresh": 0.0, "decisions": [int(d) for d in r0.decisions], "latents": "teacache_thresh0_latents",
             "decisions_tensor": "teacache_thresh0_decisions"},
            {"thresh": thresh, "decisions": [int(d) for d in r.decisions], "latents": "teacache_skip_latents",
             "decisions_tensor": "teacache_skip_decisions", "rel": [None if math.isnan(v) else v for v in r.rels],
             "acc": r.accs, "min_relative_margin": margin},
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "dit"))
    ap.add_argument("--weights-dtype", choices=["F32", "BF16"], default="F32",
                    help="dtype of transformer.safetensors (lossless either way: the weights are bf16 values)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # results independent of the machine's core count
    t0 = time.time()
    self_checks()
    summaries = [run_case(c, args.out, args.weights_dtype) for c in CASES]
    total = sum(sum(s["files"].values()) for s in summaries)
    print(json.dumps({"param_count_13b": hd.param_count(hd.HunyuanVideoConfig()), "total_bytes": total,
                      "seconds": round(time.time() - t0, 2), "cases": summaries}, indent=1))


if __name__ == "__main__":
    main()
