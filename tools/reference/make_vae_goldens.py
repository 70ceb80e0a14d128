#!/usr/bin/python3
"""Writes the VAE-decoder golden files under tests/data/vae/ from the PyTorch reference (hunyuan_vae.py).

Run:  /usr/bin/python3 tools/reference/make_vae_goldens.py [--out DIR] [--small-weights-dtype F16|F32]

Deterministic (fixed seeds, CPU, one thread, fp32). See tools/reference/README.md ("VAE decoder") for what each
file holds. Scalars are in the io file's __metadata__ as JSON strings.
"""

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hunyuan_vae as hv  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# Spec 9 tiny VAE (diffusers autoencoder/pipeline tests).
TINY = hv.HunyuanVideoVAEConfig(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                layers_per_block=1, norm_num_groups=4)
# Closer to the released model: 16 latent channels, 3 resnets per up block, the released tensor list (140 tensors:
# conv_shortcut in up blocks 2 and 3, the up-2 upsampler at the narrowed width), channels per group 2/4/8
# (released 4/8/16).
SMALL = hv.HunyuanVideoVAEConfig(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16, 32, 32),
                                 layers_per_block=2, norm_num_groups=4)

TINY_WEIGHT_SEED, TINY_INPUT_SEED = 301, 401
SMALL_WEIGHT_SEED, SMALL_INPUT_SEED = 302, 402
CHUNK_LATENT_FRAMES = 2


def stats(t: torch.Tensor) -> dict:
    t = t.double()
    return {"std": round(t.std().item(), 6), "mean": round(t.mean().item(), 6),
            "max_abs": round(t.abs().max().item(), 6)}


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double(), b.double()
    d = (a - b).abs()
    return {"max_abs": float(f"{d.max().item():.3e}"), "mean_abs": float(f"{d.mean().item():.3e}"),
            "rel_l2": float(f"{((a - b).norm() / b.norm()).item():.3e}")}


# ---------------------------------------------------------------------------------------------------------
# Self-checks against the spec's statements and independent formulations (run before writing anything)
# ---------------------------------------------------------------------------------------------------------


def self_checks():
    # Spec 4: parameter and tensor count of the released decoder (+ post_quant_conv); the up-block rule.
    rel = hv.HunyuanVideoVAEConfig()
    assert hv.decoder_param_count(rel) == hv.RELEASED_DECODER_PARAMS == 146_136_339
    assert len(hv.decoder_param_shapes(rel)) == hv.RELEASED_DECODER_TENSORS == 140
    plan = hv.up_blocks_plan(rel)
    assert [b["upsample"] for b in plan] == [(1, 2, 2), (2, 2, 2), (2, 2, 2), None]
    assert [(b["in_ch"], b["out_ch"]) for b in plan] == [(512, 512), (512, 512), (512, 256), (256, 128)]
    sh = hv.decoder_param_shapes(rel)
    assert sh["decoder.up_blocks.2.resnets.0.conv1.conv.weight"] == (256, 512, 3, 3, 3)
    assert sh["decoder.up_blocks.2.resnets.0.conv_shortcut.conv.weight"] == (256, 512, 1, 1, 1)
    assert sh["decoder.up_blocks.3.resnets.0.conv_shortcut.conv.weight"] == (128, 256, 1, 1, 1)
    assert sh["decoder.conv_out.conv.weight"] == (3, 128, 3, 3, 3) and sh["post_quant_conv.weight"] == (16, 16, 1, 1, 1)
    assert "decoder.up_blocks.3.upsamplers.0.conv.conv.weight" not in sh
    for c in (TINY, SMALL):
        assert [b["upsample"] for b in hv.up_blocks_plan(c)] == [(1, 2, 2), (2, 2, 2), (2, 2, 2), None]
    assert hv.latent_to_video_frames(rel, 33) == 129 and hv.latent_to_video_frames(rel, 16) == 61

    gen = torch.Generator().manual_seed(11)

    # Causal conv = diffusers' single replicate F.pad (1,1,1,1,2,0) + conv3d; time-causal.
    x = torch.randn(2, 3, 5, 4, 6, generator=gen)
    w = torch.randn(4, 3, 3, 3, 3, generator=gen)
    b = torch.randn(4, generator=gen)
    y, front = hv.causal_conv3d(x, w, b)
    ref = F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0), mode="replicate"), w, b)
    assert torch.allclose(y, ref, atol=1e-5) and torch.equal(front, x[:, :, -2:])
    x2 = x.clone()
    x2[:, :, 3:] += 1.0
    assert torch.equal(hv.causal_conv3d(x2, w, b)[0][:, :, :3], y[:, :, :3])
    # Cache rule: [front, x] split anywhere, incl. 1-frame chunks, gives the same output.
    ys, fr = [], None
    for (s, e) in [(0, 1), (1, 2), (2, 4), (4, 5)]:
        yc, fr = hv.causal_conv3d(x[:, :, s:e], w, b, fr)
        ys.append(yc)
    assert torch.allclose(torch.cat(ys, 2), y, atol=1e-5)

    # GroupNorm = torch's.
    x = torch.randn(2, 8, 3, 4, 5, generator=gen) * 3 + 1
    gw, gb = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    m, v = hv.group_norm_stats(x, 4)
    assert torch.allclose(hv.group_norm_apply(x, m, v, gw, gb, 4), F.group_norm(x, 4, gw, gb, eps=1e-6), atol=1e-5)

    # Upsampler interpolation = diffusers' F.interpolate form; frame counts.
    x = torch.randn(1, 2, 4, 3, 5, generator=gen)
    for fac in [(2, 2, 2), (1, 2, 2), (2, 1, 1)]:
        first = F.interpolate(x[:, :, 0], scale_factor=fac[1:], mode="nearest").unsqueeze(2)
        rest = F.interpolate(x[:, :, 1:].contiguous(), scale_factor=fac, mode="nearest")
        assert torch.equal(hv.upsample_nearest_causal(x, fac, True), torch.cat([first, rest], 2))
        assert torch.equal(hv.upsample_nearest_causal(x, fac, False),
                           F.interpolate(x, scale_factor=fac, mode="nearest"))
    assert hv.upsample_nearest_causal(x, (2, 2, 2), True).shape[2] == 1 + 2 * 3
    assert hv.upsample_nearest_causal(x[:, :, :1], (2, 2, 2), True).shape[2] == 1

    # Spec 9: vectorised frame-causal mask == loop version (31 frames x 111 positions) == diffusers' form.
    T_, HW = 31, 111
    mv = hv.frame_causal_mask_additive(T_, HW)
    assert torch.equal(mv, hv.frame_causal_mask_loop(T_, HW))
    idx = torch.arange(1, T_ + 1).repeat_interleave(HW)
    xx, yy = torch.meshgrid(idx, idx, indexing="xy")
    assert torch.equal(mv, torch.where(xx <= yy, 0.0, float("-inf")))

    # Attention: masked_fill form == additive 0/-inf mask + softmax; the mask matters except on the last frame.
    params = hv.init_random(TINY, 5)
    x = torch.randn(1, 8, 3, 2, 3, generator=gen)
    out_c = hv.mid_block_attention(params, x, TINY)
    out_n = hv.mid_block_attention(params, x, TINY, causal=False)
    assert torch.allclose(out_c[:, :, -1], out_n[:, :, -1], atol=1e-5)
    assert (out_c[:, :, 0] - out_n[:, :, 0]).abs().max() > 1e-2
    p = params
    pre = "decoder.mid_block.attentions.0"
    tok = x.permute(0, 2, 3, 4, 1).reshape(1, 18, 8)
    nt = F.group_norm(tok.transpose(1, 2), 4, p[pre + ".group_norm.weight"], p[pre + ".group_norm.bias"],
                      eps=1e-6).transpose(1, 2)
    q, k, vv = (F.linear(nt, p[f"{pre}.{n}.weight"], p[f"{pre}.{n}.bias"]) for n in ("to_q", "to_k", "to_v"))
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8) + hv.frame_causal_mask_additive(3, 6), -1) @ vv
    o = F.linear(a, p[pre + ".to_out.0.weight"], p[pre + ".to_out.0.bias"]) + tok
    assert torch.allclose(out_c, o.reshape(1, 3, 2, 3, 8).permute(0, 4, 1, 2, 3), atol=1e-5)

    # Weights are exact in fp16 and bf16.
    for t in params.values():
        assert torch.equal(t.half().float(), t) and torch.equal(t.bfloat16().float(), t)

    # Chunked decode: "global" GroupNorm stats == full decode for every chunk size; "chunk" with one chunk == full;
    # "chunk" is causal: its first chunk == the full decode of that chunk alone.
    z = torch.randn(1, 4, 4, 2, 3, generator=gen)
    full, _ = hv.decode(params, z, TINY)
    assert full.shape == (1, 3, 13, 16, 24)
    for c in (1, 2, 3, 4, 5):
        out, _, info = hv.decode_chunked(params, z, TINY, c, "global")
        assert (out - full).abs().max() < 1e-4, (c, (out - full).abs().max())
    out, _, _ = hv.decode_chunked(params, z, TINY, 4, "chunk")
    assert torch.equal(out, full)
    out, _, info = hv.decode_chunked(params, z, TINY, 2, "chunk")
    head, _ = hv.decode(params, z[:, :, :2], TINY)
    assert torch.allclose(out[:, :, :5], head, atol=1e-5) and (out - full).abs().max() > 1e-3
    assert info["chunks"] == [[0, 2, 0, 5], [2, 4, 5, 13]]


# ---------------------------------------------------------------------------------------------------------
# Golden generation
# ---------------------------------------------------------------------------------------------------------


class Writer:
    def __init__(self):
        self.tensors = OrderedDict()
        self.desc = OrderedDict()
        self.meta = OrderedDict()

    def put(self, key, t, what, dtype=torch.float32):
        self.tensors[key] = t.detach().to(dtype).contiguous()
        self.desc[key] = what

    def save(self, path, config_name):
        meta_str = OrderedDict(config=config_name, description=json.dumps(self.desc))
        for k, v in self.meta.items():
            meta_str[k] = json.dumps(v)
        save_file(self.tensors, path, metadata=meta_str)
        back, back_meta = load_file(path)
        assert list(back) == list(self.tensors) and all(torch.equal(back[k], self.tensors[k]) for k in back)
        assert json.loads(back_meta["description"]) == self.desc


def write_weights(cfg, params, path, dtype, seed):
    """Decoder + post_quant_conv under diffusers names, plus NaN-filled encoder.* / quant_conv.* dummies (a loader
    must skip them; a NaN in the output means one was used). Written in sorted name order like real files, so the
    dummies sit between decoder.* and post_quant_conv.*."""
    allt = OrderedDict(params)
    dummies = OrderedDict((k, torch.full(s, float("nan"))) for k, s in hv.encoder_dummy_shapes(cfg).items())
    allt.update(dummies)
    out = OrderedDict((k, allt[k].to(dtype)) for k in sorted(allt))
    save_file(out, path, metadata={"format": "pt", "generator": "tools/reference/make_vae_goldens.py",
                                   "init": f"hunyuan_vae.init_random(seed={seed}); values exact in F16/BF16/F32",
                                   "skip": json.dumps(list(dummies))})
    back, _ = load_file(path)
    for k in params:
        assert torch.equal(back[k].float(), params[k])
    return list(dummies)


def write_config(cfg, path):
    with open(path, "w") as f:
        json.dump(cfg.to_json_dict(), f, indent=2)
        f.write("\n")


def plan_meta(cfg):
    return [{"in": b["in_ch"], "out": b["out_ch"], "resnets": b["num_resnets"],
             "upsample": list(b["upsample"]) if b["upsample"] else None} for b in hv.up_blocks_plan(cfg)]


def common_meta(w, cfg, params):
    w.meta["constants"] = {"scaling_factor": cfg.scaling_factor, "gn_eps": hv.GN_EPS,
                           "postprocess": "(raw / 2 + 0.5).clamp(0, 1)",
                           "param_count": hv.decoder_param_count(cfg), "tensor_count": len(params)}
    w.meta["up_blocks"] = plan_meta(cfg)


def run_tiny(out_root):
    t0 = time.time()
    cfg = TINY
    out_dir = os.path.join(out_root, "tiny")
    os.makedirs(out_dir, exist_ok=True)
    params = hv.init_random(cfg, TINY_WEIGHT_SEED)
    gen = torch.Generator().manual_seed(TINY_INPUT_SEED)
    z = torch.randn(1, 4, 3, 4, 4, generator=gen)
    z2 = torch.randn(1, 4, 5, 2, 3, generator=gen)
    attn_x = torch.randn(1, 8, 4, 3, 5, generator=gen) * 2.0 + 0.5

    w = Writer()
    common_meta(w, cfg, params)

    # ---- case 1: full decode with intermediates ----
    raw, frames, run = hv.decode(params, z, cfg, return_run=True)
    raw64, _ = hv.decode(params, z, cfg, dtype=torch.float64)
    I = {k: v[0] for k, v in run.inter.items()}
    w.put("z", z, "case 1 latent [1,4,3,4,4] (raw DiT-side latent, before 1/scaling_factor)")
    w.put("post_quant_conv", I["post_quant_conv"], "post_quant_conv(z / scaling_factor) [1,4,3,4,4]")
    w.put("conv_in", I["conv_in"], "after decoder.conv_in [1,8,3,4,4]")
    w.put("mid_attn_in", I["mid_attn_in"], "after mid_block.resnets.0 = attention input [1,8,3,4,4]")
    w.put("mid_attn_out", I["mid_attn_out"], "after mid_block.attentions.0 (residual included) [1,8,3,4,4]")
    w.put("mid_block", I["mid_block"], "after the mid block [1,8,3,4,4]")
    w.put("up_block_0", I["up_block_0"], "after up_blocks.0 (upsample (1,2,2)) [1,8,3,8,8]")
    w.put("up_block_1", I["up_block_1"], "after up_blocks.1 (upsample (2,2,2)) [1,8,5,16,16]")
    w.put("up_block_2", I["up_block_2"], "after up_blocks.2 (upsample (2,2,2)) [1,8,9,32,32]; F16 (size)",
          torch.float16)
    w.put("up_block_3", I["up_block_3"], "after up_blocks.3 (no upsampler) [1,8,9,32,32]; F16 (size)",
          torch.float16)
    w.put("raw", raw, "decoder output (conv_out) [1,3,9,32,32], about [-1,1]")
    w.put("frames", frames, "(raw/2 + 0.5).clamp(0,1) [1,3,9,32,32]")
    w.meta["case1"] = {"latent_shape": list(z.shape), "video_shape": list(raw.shape),
                       "fp32_vs_fp64": diff(raw, raw64), "raw": stats(raw),
                       "raw_outside_pm1_fraction": round(((raw < -1) | (raw > 1)).double().mean().item(), 6),
                       "intermediates": {k: stats(v) for k, v in I.items()}}

    # ---- mid-block attention in isolation (tiny weights, non-square H x W, 4 frames) ----
    attn_y = hv.mid_block_attention(params, attn_x, cfg)
    attn_nc = hv.mid_block_attention(params, attn_x, cfg, causal=False)
    w.put("attn_in", attn_x, "mid-block attention test input [1,8,4,3,5] (T=4, H=3, W=5; 60 tokens)")
    w.put("attn_out", attn_y, "decoder.mid_block.attentions.0(attn_in): GN (full-tensor stats), 1 head of dim 8, "
                              "frame-causal, to_out.0, + residual [1,8,4,3,5]")
    w.meta["attention"] = {"tokens": 60, "token_order": "n = (t*H + h)*W + w, channel-last",
                           "heads": 1, "head_dim": 8, "scale": 1 / math.sqrt(8),
                           "causal_vs_noncausal_per_frame_max_abs": [
                               round((attn_y[:, :, t] - attn_nc[:, :, t]).abs().max().item(), 6) for t in range(4)]}

    # ---- case 2: 5 latent frames, chunks of 2 ----
    full2, _ = hv.decode(params, z2, cfg)
    full2_64, _ = hv.decode(params, z2, cfg, dtype=torch.float64)
    ex2, _, info = hv.decode_chunked(params, z2, cfg, CHUNK_LATENT_FRAMES, "global")
    pc2, _, info_pc = hv.decode_chunked(params, z2, cfg, CHUNK_LATENT_FRAMES, "chunk")
    assert (ex2 - full2).abs().max() < 1e-4
    w.put("chunk_z", z2, "case 2 latent [1,4,5,2,3] (5 latent frames -> 17 video frames, 16x24 px)")
    w.put("chunk_full", full2, "case 2 full decode [1,3,17,16,24] = the exact chunked decode (chunks of 2 latent "
                               "frames, GroupNorm stats of the full activations) up to float rounding")
    w.put("chunk_per_chunk_stats", pc2, "case 2 chunk-major decode, chunks of 2 latent frames, every GroupNorm "
                                        "with the current chunk's own statistics [1,3,17,16,24]")
    w.meta["case2"] = {"latent_shape": list(z2.shape), "video_shape": list(full2.shape),
                       "chunk_latent_frames": CHUNK_LATENT_FRAMES,
                       "chunks_latent_to_video": info["chunks"],
                       "exact_chunked_vs_full": diff(ex2, full2), "full_fp32_vs_fp64": diff(full2, full2_64),
                       "per_chunk_stats_vs_full": diff(pc2, full2),
                       "per_chunk_stats_vs_full_per_chunk": [
                           diff(pc2[:, :, f0:f1], full2[:, :, f0:f1]) for (_, _, f0, f1) in info["chunks"]],
                       "per_chunk_frames_vs_full_frames": diff(hv.postprocess(pc2), hv.postprocess(full2))}

    write_config(cfg, os.path.join(out_dir, "config.json"))
    skipped = write_weights(cfg, params, os.path.join(out_dir, "vae.safetensors"), torch.float32, TINY_WEIGHT_SEED)
    w.save(os.path.join(out_dir, "io.safetensors"), "tiny")
    return summary("tiny", cfg, out_dir, w, skipped, t0)


def run_small(out_root, weights_dtype):
    t0 = time.time()
    cfg = SMALL
    out_dir = os.path.join(out_root, "small")
    os.makedirs(out_dir, exist_ok=True)
    params = hv.init_random(cfg, SMALL_WEIGHT_SEED)
    gen = torch.Generator().manual_seed(SMALL_INPUT_SEED)
    z = torch.randn(1, 16, 3, 8, 8, generator=gen)

    w = Writer()
    common_meta(w, cfg, params)
    raw, frames, run = hv.decode(params, z, cfg, return_run=True)
    raw64, _ = hv.decode(params, z, cfg, dtype=torch.float64)
    I = {k: v[0] for k, v in run.inter.items()}
    w.put("z", z, "latent [1,16,3,8,8]")
    w.put("conv_in", I["conv_in"], "after decoder.conv_in [1,32,3,8,8]")
    w.put("mid_block", I["mid_block"], "after the mid block [1,32,3,8,8]")
    w.put("up_block_0", I["up_block_0"], "after up_blocks.0 [1,32,3,16,16]; F16 (size)", torch.float16)
    w.put("raw", raw, "decoder output [1,3,9,64,64] (frames = (raw/2+0.5).clamp(0,1), not stored)")
    chunked = {}
    for c in (1, 2):
        ex, _, info = hv.decode_chunked(params, z, cfg, c, "global")
        pc, _, _ = hv.decode_chunked(params, z, cfg, c, "chunk")
        assert (ex - raw).abs().max() < 1e-4
        chunked[str(c)] = {"chunks_latent_to_video": info["chunks"], "exact_chunked_vs_full": diff(ex, raw),
                           "per_chunk_stats_vs_full": diff(pc, raw),
                           "per_chunk_frames_vs_full_frames": diff(hv.postprocess(pc), frames)}
    w.meta["case1"] = {"latent_shape": list(z.shape), "video_shape": list(raw.shape),
                       "fp32_vs_fp64": diff(raw, raw64), "raw": stats(raw),
                       "intermediates": {k: stats(v) for k, v in I.items()}, "chunked": chunked}

    write_config(cfg, os.path.join(out_dir, "config.json"))
    wdt = {"F16": torch.float16, "F32": torch.float32}[weights_dtype]
    skipped = write_weights(cfg, params, os.path.join(out_dir, "vae.safetensors"), wdt, SMALL_WEIGHT_SEED)
    w.save(os.path.join(out_dir, "io.safetensors"), "small")
    return summary("small", cfg, out_dir, w, skipped, t0)


def summary(name, cfg, out_dir, w, skipped, t0):
    files = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
    return {"name": name, "config": cfg.to_json_dict(), "param_count": hv.decoder_param_count(cfg),
            "files": files, "encoder_dummies_to_skip": skipped,
            "tensors": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in w.tensors.items()},
            "meta": w.meta, "seconds": round(time.time() - t0, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "vae"))
    ap.add_argument("--small-weights-dtype", choices=["F16", "F32"], default="F16",
                    help="dtype of small/vae.safetensors (lossless either way: the weights are exact in F16)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    self_checks()
    cases = [run_tiny(args.out), run_small(args.out, args.small_weights_dtype)]
    total = sum(sum(c["files"].values()) for c in cases)
    rel = hv.HunyuanVideoVAEConfig()
    print(json.dumps({"released_decoder_param_count": hv.decoder_param_count(rel),
                      "released_decoder_tensors": len(hv.decoder_param_shapes(rel)),
                      "released_up_blocks": plan_meta(rel), "total_bytes": total,
                      "seconds": round(time.time() - t0, 2), "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
