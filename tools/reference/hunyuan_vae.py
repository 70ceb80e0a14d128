"""PyTorch reference of the HunyuanVideo causal 3D VAE *decoder* (diffusers `AutoencoderKLHunyuanVideo`
semantics), written from shared/spec/hunyuan-video.md section 4 (structure, weight names, conventions) and
section 9 (tiny config).

Scope: a readable, small-shape reference that the C++/CUDA decoder is checked against (golden files written by
make_vae_goldens.py). It is not fast. Three decodes share one code path (`_decoder_forward`, driven by a
`DecodeRun` that holds the caches and the GroupNorm policy):

- `decode(params, z, cfg)`: the whole latent at once (what diffusers does without tiling/framewise decoding).
- `decode_chunked(..., gn_stats="global")`: chunk-major decode over temporal latent chunks with causal caches
  and GroupNorm statistics of the FULL activations (taken from a full decode: "two-pass"). Equal to `decode`
  up to float rounding.
- `decode_chunked(..., gn_stats="chunk")`: the same chunk-major decode with every GroupNorm using the
  statistics of the current chunk only (what a bounded-memory single-pass decoder does). Not equal to `decode`.

The exact chunk/cache rules are in `decode_chunked`'s docstring and tools/reference/README.md ("VAE").

Tensors are [B, C, T, H, W] (batch first). Compute dtype float32 by default; float64 is accepted to measure the
fp32 reference's own rounding error.
"""

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

GN_EPS = 1e-6  # spec 4: every GroupNorm of the decoder (resnets, attention, conv_norm_out)
RELEASED_DECODER_PARAMS = 146_136_339  # spec 4 (post_quant_conv + decoder)
RELEASED_DECODER_TENSORS = 140


# ---------------------------------------------------------------------------------------------------------
# Configuration (spec 4; diffusers vae/config.json field names)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class HunyuanVideoVAEConfig:
    """Defaults are the released VAE "884-16c-hy" (spec 4)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    down_block_types: Tuple[str, ...] = ("HunyuanVideoDownBlock3D",) * 4
    up_block_types: Tuple[str, ...] = ("HunyuanVideoUpBlock3D",) * 4
    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.476986
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        assert self.act_fn == "silu", "only act_fn 'silu' is specified"
        assert len(self.up_block_types) == len(self.block_out_channels)
        assert all(c % self.norm_num_groups == 0 for c in self.block_out_channels), "groups must divide channels"
        for r in (self.spatial_compression_ratio, self.temporal_compression_ratio):
            assert r >= 1 and (r & (r - 1)) == 0, "compression ratios must be powers of two"
        up_blocks_plan(self)  # validates the up-block rule

    def to_json_dict(self) -> dict:
        d = OrderedDict(_class_name="AutoencoderKLHunyuanVideo")
        for k, v in asdict(self).items():
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_json_dict(cls, d: dict) -> "HunyuanVideoVAEConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def up_blocks_plan(cfg: HunyuanVideoVAEConfig) -> List[dict]:
    """Per up block i: input/output channels and the upsample factor (t, h, w) or None.

    Spec 4 states the rule for temporal compression 4 with 4 blocks as "spatial upsample if i < 3; time
    upsample if i >= 1 and not the last block". The general form (the diffusers decoder's, of which the spec's
    numbers are the instance n = 4, log2(8) = 3, log2(4) = 2):
        n = len(block_out_channels), S = log2(spatial_compression_ratio), Tn = log2(temporal_compression_ratio)
        spatial  upsample in block i  iff  i < S
        temporal upsample in block i  iff  n - 1 - Tn <= i < n - 1
    so the temporal upsamplings sit in the last Tn blocks before the final one. (diffusers itself raises unless
    temporal_compression_ratio == 4; this reference accepts any power of two as long as the totals come out
    right.) Channels: in = reversed(block_out_channels)[i-1] (block 0: block_out_channels[-1]),
    out = reversed(block_out_channels)[i]; each block has layers_per_block + 1 resnets.
    """
    n = len(cfg.block_out_channels)
    S = int(round(math.log2(cfg.spatial_compression_ratio)))
    Tn = int(round(math.log2(cfg.temporal_compression_ratio)))
    rev = list(reversed(cfg.block_out_channels))
    plan = []
    prev = rev[0]
    for i in range(n):
        sp = i < S
        tm = (n - 1 - Tn) <= i < (n - 1)
        factor = (2 if tm else 1, 2 if sp else 1, 2 if sp else 1) if (sp or tm) else None
        plan.append(dict(in_ch=prev, out_ch=rev[i], upsample=factor, num_resnets=cfg.layers_per_block + 1))
        prev = rev[i]
    n_sp = sum(1 for b in plan if b["upsample"] and b["upsample"][1] == 2)
    n_tm = sum(1 for b in plan if b["upsample"] and b["upsample"][0] == 2)
    assert n_sp == S and n_tm == Tn, f"config cannot realise the compression ratios with {n} up blocks"
    return plan


def latent_to_video_frames(cfg: HunyuanVideoVAEConfig, t_latent: int) -> int:
    """Spec 4: F = tc * (T - 1) + 1 (each time upsampling maps T -> 1 + 2 (T - 1))."""
    return cfg.temporal_compression_ratio * (t_latent - 1) + 1


# ---------------------------------------------------------------------------------------------------------
# Weight names and shapes (spec 4, diffusers names; Conv3d weights [out, in, kt, kh, kw], Linear [out, in])
# ---------------------------------------------------------------------------------------------------------


def _conv(sd, name, c_out, c_in, k):
    sd[name + ".weight"] = (c_out, c_in, k, k, k)
    sd[name + ".bias"] = (c_out,)


def _norm(sd, name, c):
    sd[name + ".weight"] = (c,)
    sd[name + ".bias"] = (c,)


def _resnet(sd, prefix, c_in, c_out):
    _norm(sd, prefix + ".norm1", c_in)
    _conv(sd, prefix + ".conv1.conv", c_out, c_in, 3)
    _norm(sd, prefix + ".norm2", c_out)
    _conv(sd, prefix + ".conv2.conv", c_out, c_out, 3)
    if c_in != c_out:
        _conv(sd, prefix + ".conv_shortcut.conv", c_out, c_in, 1)


def decoder_param_shapes(cfg: HunyuanVideoVAEConfig) -> "OrderedDict[str, Tuple[int, ...]]":
    """post_quant_conv + every decoder tensor, diffusers names, in forward order (nothing allocated)."""
    L = cfg.latent_channels
    top = cfg.block_out_channels[-1]
    sd = OrderedDict()
    _conv(sd, "post_quant_conv", L, L, 1)  # plain nn.Conv3d(L, L, 1): no ".conv" level
    _conv(sd, "decoder.conv_in.conv", top, L, 3)
    _resnet(sd, "decoder.mid_block.resnets.0", top, top)
    if cfg.mid_block_add_attention:
        a = "decoder.mid_block.attentions.0"
        _norm(sd, a + ".group_norm", top)
        for lin in ("to_q", "to_k", "to_v", "to_out.0"):
            sd[f"{a}.{lin}.weight"] = (top, top)
            sd[f"{a}.{lin}.bias"] = (top,)
    _resnet(sd, "decoder.mid_block.resnets.1", top, top)
    for i, blk in enumerate(up_blocks_plan(cfg)):
        for j in range(blk["num_resnets"]):
            c_in = blk["in_ch"] if j == 0 else blk["out_ch"]
            _resnet(sd, f"decoder.up_blocks.{i}.resnets.{j}", c_in, blk["out_ch"])
        if blk["upsample"] is not None:
            _conv(sd, f"decoder.up_blocks.{i}.upsamplers.0.conv.conv", blk["out_ch"], blk["out_ch"], 3)
    _norm(sd, "decoder.conv_norm_out", cfg.block_out_channels[0])
    _conv(sd, "decoder.conv_out.conv", cfg.out_channels, cfg.block_out_channels[0], 3)
    return sd


def encoder_dummy_shapes(cfg: HunyuanVideoVAEConfig) -> "OrderedDict[str, Tuple[int, ...]]":
    """A few encoder-side tensors (real names and shapes) for exercising a loader's "skip the encoder" rule
    (spec 4: encoder.* and quant_conv.* can be skipped for T2V). Not a complete encoder."""
    L2 = 2 * cfg.latent_channels
    c0, top = cfg.block_out_channels[0], cfg.block_out_channels[-1]
    sd = OrderedDict()
    _conv(sd, "encoder.conv_in.conv", c0, cfg.in_channels, 3)
    # Same shape as decoder.mid_block.attentions.0.to_q.weight: a loader that matches names by suffix would
    # pick it up.
    sd["encoder.mid_block.attentions.0.to_q.weight"] = (top, top)
    _conv(sd, "encoder.conv_out.conv", L2, top, 3)
    _conv(sd, "quant_conv", L2, L2, 1)
    return sd


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def decoder_param_count(cfg: HunyuanVideoVAEConfig) -> int:
    return sum(_numel(s) for s in decoder_param_shapes(cfg).values())


def _exact_in_f16_bf16(t: torch.Tensor) -> torch.Tensor:
    """Rounds to fp16, then to bf16: the result is exactly representable in F16, BF16 and F32, so the same
    weights serve an fp32, fp16 or bf16 decoder without a weight-rounding ambiguity."""
    t = t.to(torch.float16).to(torch.float32).to(torch.bfloat16).to(torch.float32)
    assert torch.equal(t.to(torch.float16).to(torch.float32), t)
    return t


def init_random(cfg: HunyuanVideoVAEConfig, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """Deterministic random weights, fp32 tensors whose values are exact in fp16 and bf16 too.

    - Conv3d / Linear weights: N(0, 1) / sqrt(fan_in) (fan_in = c_in * k^3 or in_features): every conv keeps
      activations O(1).
    - GroupNorm weights: 1 + 0.1 N(0, 1).
    - Every bias: 0.1 N(0, 1).
    Drawn in decoder_param_shapes() order from one torch.Generator seeded with `seed`; then rounded by
    `_exact_in_f16_bf16`.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = OrderedDict()
    for name, shape in decoder_param_shapes(cfg).items():
        z = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith(".bias"):
            t = 0.1 * z
        elif len(shape) == 1:  # GroupNorm weight
            t = 1.0 + 0.1 * z
        else:
            t = z / math.sqrt(_numel(shape[1:]))
        out[name] = _exact_in_f16_bf16(t)
    return out


# ---------------------------------------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------------------------------------


def group_norm_stats(x: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """mean and biased variance per (batch, group) over (C/groups, T, H, W) (or (C/groups, N) for [B, C, N])."""
    B, C = x.shape[:2]
    xg = x.reshape(B, groups, -1)
    mean = xg.mean(dim=-1)
    var = ((xg - mean[..., None]) ** 2).mean(dim=-1)
    return mean, var


def group_norm_apply(x, mean, var, weight, bias, groups: int, eps: float = GN_EPS):
    """y = (x - mean) * rsqrt(var + eps) * weight[c] + bias[c]; mean/var: [B, groups]."""
    B, C = x.shape[:2]
    shape = (B, groups) + (1,) * (x.dim() - 1)
    xg = x.reshape((B, groups, C // groups) + x.shape[2:])
    y = (xg - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
    y = y.reshape(x.shape)
    cshape = (1, C) + (1,) * (x.dim() - 2)
    return y * weight.reshape(cshape) + bias.reshape(cshape)


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, front: Optional[torch.Tensor] = None):
    """Spec 4 causal Conv3d (stride 1, cubic kernel k in {1, 3}).

    Time: the k-1 frames in front are `front` (the cache: the last k-1 input frames of the previous chunk) or,
    when front is None (start of the video), k-1 copies of frame 0 (replicate padding). Nothing at the back.
    Space: replicate padding by k//2 on both sides of H and W (NOT zero padding).
    Returns (y, new_front): new_front = the last k-1 frames of [front, x] (None for k = 1). It is taken from the
    time-padded sequence, so a chunk shorter than k-1 frames still yields the right cache.
    """
    k = weight.shape[2]
    assert weight.shape[2:] == (k, k, k) and k in (1, 3), weight.shape
    if k == 1:
        return F.conv3d(x, weight, bias), None
    if front is None:
        front = x[:, :, :1].expand(-1, -1, k - 1, -1, -1)
    assert front.shape[2] == k - 1
    xt = torch.cat([front, x], dim=2)
    xp = F.pad(xt, (k // 2, k // 2, k // 2, k // 2, 0, 0), mode="replicate")
    return F.conv3d(xp, weight, bias), xt[:, :, -(k - 1):].clone()


def upsample_nearest_causal(x: torch.Tensor, factor: Tuple[int, int, int], starts_video: bool) -> torch.Tensor:
    """Spec 4 upsampler interpolation: nearest-neighbour by (ft, fh, fw). If `starts_video`, frame 0 of `x` is
    frame 0 of the whole video and is upsampled only spatially (fh, fw); every other frame by the full factor
    (each frame repeated ft times in time). T -> 1 + ft (T - 1) at the video start, else T -> ft T."""
    ft, fh, fw = factor

    def rep(t, a, b, c):
        return t.repeat_interleave(a, dim=2).repeat_interleave(b, dim=3).repeat_interleave(c, dim=4)

    if starts_video:
        first = rep(x[:, :, :1], 1, fh, fw)
        if x.shape[2] == 1:
            return first
        return torch.cat([first, rep(x[:, :, 1:], ft, fh, fw)], dim=2)
    return rep(x, ft, fh, fw)


def frame_causal_mask(q_frames: torch.Tensor, k_frames: torch.Tensor) -> torch.Tensor:
    """Boolean [Nq, Nk]: True where the key is visible (key frame <= query frame). Inputs: the (absolute) latent
    frame index of every query / key token."""
    return k_frames[None, :] <= q_frames[:, None]


def frame_causal_mask_additive(num_frames: int, hw: int, dtype=torch.float32) -> torch.Tensor:
    """diffusers' prepare_causal_attention_mask, vectorised: [T*HW, T*HW] of 0 / -inf."""
    f = torch.arange(num_frames).repeat_interleave(hw)
    m = torch.zeros(num_frames * hw, num_frames * hw, dtype=dtype)
    return m.masked_fill(~frame_causal_mask(f, f), float("-inf"))


def frame_causal_mask_loop(num_frames: int, hw: int, dtype=torch.float32) -> torch.Tensor:
    """The loop form (row i sees keys [0, (i // hw + 1) * hw)), for the vectorised-vs-loop check of spec 9."""
    n = num_frames * hw
    m = torch.full((n, n), float("-inf"), dtype=dtype)
    for i in range(n):
        m[i, : (i // hw + 1) * hw] = 0
    return m


def attention_single_head(q, k, v, visible):
    """softmax(q k^T / sqrt(C) + mask) v; q [B, Nq, C], k/v [B, Nk, C], visible [Nq, Nk] bool."""
    if q.is_cuda and hasattr(F, "scaled_dot_product_attention"):  # training on a GPU (tools/demo)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible.to(q.device))
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q, k.transpose(1, 2)) * scale
    s = s.masked_fill(~visible, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def postprocess(raw: torch.Tensor) -> torch.Tensor:
    """Spec 4: frames in [0, 1] = (x / 2 + 0.5).clamp(0, 1)."""
    return (raw / 2 + 0.5).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
# Decode state: caches and the GroupNorm policy
# ---------------------------------------------------------------------------------------------------------


class DecodeRun:
    """Everything that survives from one temporal chunk to the next.

    gn_mode:
      "self"  : each GroupNorm uses the statistics of the tensor it is given (the full activation when the
                whole latent is one chunk; the current chunk's activation otherwise). The stats are recorded
                in `self.recorded[name]` (a list, one entry per chunk).
      "fixed" : each GroupNorm uses `self.stats[name]` = (mean, var) of shape [B, groups], e.g. the stats of
                the full activation recorded by a full decode ("two-pass" exact chunked decode).
    conv_cache[name]  : the last k-1 INPUT frames of causal conv `name` (before its spatial padding).
    kv_cache[name]    : (K, V) [B, N_seen, C] of the attention's keys/values of all earlier latent frames.
    frames_seen[name] : how many latent frames the attention has seen (absolute frame index of this chunk).
    first_chunk       : True while the chunk being decoded starts the video (upsamplers' frame-0 rule).
    """

    def __init__(self, cfg: HunyuanVideoVAEConfig, gn_mode: str = "self", stats=None, keep: bool = False):
        assert gn_mode in ("self", "fixed")
        self.cfg = cfg
        self.gn_mode = gn_mode
        self.stats = stats or {}
        self.recorded: Dict[str, list] = {}
        self.conv_cache: Dict[str, torch.Tensor] = {}
        self.kv_cache: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.frames_seen: Dict[str, int] = {}
        self.first_chunk = True
        self.keep = keep  # record named intermediates
        self.inter: Dict[str, list] = {}

    # -- ops with state --
    def gn(self, p, name, x, groups):
        if self.gn_mode == "fixed":
            mean, var = self.stats[name]
        else:
            mean, var = group_norm_stats(x, groups)
            self.recorded.setdefault(name, []).append((mean, var))
        return group_norm_apply(x, mean, var, p[name + ".weight"], p[name + ".bias"], groups)

    def conv(self, p, name, x):
        y, front = causal_conv3d(x, p[name + ".weight"], p[name + ".bias"], self.conv_cache.get(name))
        if front is not None:
            self.conv_cache[name] = front
        return y

    def save(self, key, x):
        if self.keep:
            self.inter.setdefault(key, []).append(x.detach().clone())


def _resnet_forward(run: DecodeRun, p, prefix, x, groups):
    """Spec 4 ResNet block: GN -> SiLU -> conv1 -> GN -> SiLU -> conv2, plus the (1x1x1 conv) shortcut."""
    h = F.silu(run.gn(p, prefix + ".norm1", x, groups))
    h = run.conv(p, prefix + ".conv1.conv", h)
    h = F.silu(run.gn(p, prefix + ".norm2", h, groups))
    h = run.conv(p, prefix + ".conv2.conv", h)
    if (prefix + ".conv_shortcut.conv.weight") in p:
        x = run.conv(p, prefix + ".conv_shortcut.conv", x)
    return x + h


def _attention_forward(run: DecodeRun, p, prefix, x, groups):
    """Spec 4 mid-block attention: tokens = all T*H*W positions, channel-last (token n = (t*H + h)*W + w),
    GN on the input, single head of dim C, frame-causal mask, to_out.0, plus the residual (the input before the
    GN). Keys/values of earlier chunks come from run.kv_cache."""
    B, C, T, H, W = x.shape
    tok = x.permute(0, 2, 3, 4, 1).reshape(B, T * H * W, C)
    normed = run.gn(p, prefix + ".group_norm", tok.transpose(1, 2), groups).transpose(1, 2)
    q = F.linear(normed, p[prefix + ".to_q.weight"], p[prefix + ".to_q.bias"])
    k = F.linear(normed, p[prefix + ".to_k.weight"], p[prefix + ".to_k.bias"])
    v = F.linear(normed, p[prefix + ".to_v.weight"], p[prefix + ".to_v.bias"])
    t0 = run.frames_seen.get(prefix, 0)
    if prefix in run.kv_cache:
        k_old, v_old = run.kv_cache[prefix]
        k_all, v_all = torch.cat([k_old, k], dim=1), torch.cat([v_old, v], dim=1)
    else:
        k_all, v_all = k, v
    run.kv_cache[prefix] = (k_all, v_all)
    run.frames_seen[prefix] = t0 + T
    q_frames = torch.arange(t0, t0 + T, device=x.device).repeat_interleave(H * W)
    k_frames = torch.arange(0, t0 + T, device=x.device).repeat_interleave(H * W)
    o = attention_single_head(q, k_all, v_all, frame_causal_mask(q_frames, k_frames))
    o = F.linear(o, p[prefix + ".to_out.0.weight"], p[prefix + ".to_out.0.bias"])
    out = o + tok
    return out.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3).contiguous()


def _upsampler_forward(run: DecodeRun, p, prefix, x, factor):
    """Spec 4 upsampler: nearest interpolation (frame 0 of the video only spatially), then a causal conv k3."""
    h = upsample_nearest_causal(x, factor, starts_video=run.first_chunk)
    return run.conv(p, prefix + ".conv.conv", h)


def _decoder_forward(run: DecodeRun, p, z: torch.Tensor) -> torch.Tensor:
    """Decodes one temporal chunk of latents (or the whole latent) with the state in `run`. z: raw latents
    (before the 1/scaling_factor)."""
    cfg = run.cfg
    g = cfg.norm_num_groups
    # z / scaling_factor: one IEEE division by the scaling factor rounded to the compute dtype.
    x = z / torch.tensor(cfg.scaling_factor, dtype=z.dtype)
    x = F.conv3d(x, p["post_quant_conv.weight"], p["post_quant_conv.bias"])  # 1x1x1, no padding
    run.save("post_quant_conv", x)
    x = run.conv(p, "decoder.conv_in.conv", x)
    run.save("conv_in", x)
    x = _resnet_forward(run, p, "decoder.mid_block.resnets.0", x, g)
    if cfg.mid_block_add_attention:
        run.save("mid_attn_in", x)
        x = _attention_forward(run, p, "decoder.mid_block.attentions.0", x, g)
        run.save("mid_attn_out", x)
    x = _resnet_forward(run, p, "decoder.mid_block.resnets.1", x, g)
    run.save("mid_block", x)
    for i, blk in enumerate(up_blocks_plan(cfg)):
        for j in range(blk["num_resnets"]):
            x = _resnet_forward(run, p, f"decoder.up_blocks.{i}.resnets.{j}", x, g)
        if blk["upsample"] is not None:
            x = _upsampler_forward(run, p, f"decoder.up_blocks.{i}.upsamplers.0", x, blk["upsample"])
        run.save(f"up_block_{i}", x)
    x = F.silu(run.gn(p, "decoder.conv_norm_out", x, g))
    x = run.conv(p, "decoder.conv_out.conv", x)
    return x


def _cast(params, dtype):
    return {k: v.to(dtype) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------


def decode(params, z: torch.Tensor, cfg: HunyuanVideoVAEConfig, dtype=torch.float32, return_run: bool = False):
    """Full decode (spec 4): z / scaling_factor -> post_quant_conv -> decoder.
    Returns (raw [B, out, F, 8H, 8W] about [-1, 1], frames = (raw/2 + 0.5).clamp(0, 1)), plus the DecodeRun
    (intermediates in run.inter[key][0], GroupNorm stats in run.recorded[name][0]) if return_run."""
    p = _cast(params, dtype)
    run = DecodeRun(cfg, "self", keep=return_run)
    raw = _decoder_forward(run, p, z.to(dtype))
    F_ = latent_to_video_frames(cfg, z.shape[2])
    assert raw.shape[2] == F_, (raw.shape, F_)
    if return_run:
        return raw, postprocess(raw), run
    return raw, postprocess(raw)


def full_gn_stats(params, z, cfg, dtype=torch.float32):
    """{GroupNorm name: (mean, var) [B, groups]} of the full decode's activations."""
    _, _, run = decode(params, z, cfg, dtype=dtype, return_run=True)
    return {k: v[0] for k, v in run.recorded.items()}


def chunk_video_frames(cfg: HunyuanVideoVAEConfig, t0: int, t1: int) -> Tuple[int, int]:
    """Video frames [f0, f1) produced by the latent chunk [t0, t1) in a chunk-major causal decode:
    the first chunk gives 1 + tc (t1 - 1) frames, a later one tc (t1 - t0)."""
    tc = cfg.temporal_compression_ratio
    f0 = 0 if t0 == 0 else tc * (t0 - 1) + 1
    return f0, tc * (t1 - 1) + 1


def decode_chunked(params, z: torch.Tensor, cfg: HunyuanVideoVAEConfig, chunk_latent_frames: int,
                   gn_stats: str = "global", dtype=torch.float32, stats=None, keep: bool = False):
    """Chunk-major causal decode over temporal latent chunks [0, c), [c, 2c), ... (the last may be shorter).

    Each chunk runs the whole network (post_quant_conv ... conv_out) before the next chunk starts. State carried
    between chunks (DecodeRun):
      * causal convs (k = 3): the time front-padding of a chunk is the cache = the last 2 INPUT frames of that
        conv from the previous chunk (taken from [previous front, previous input], so a 1-frame chunk still
        leaves 2 frames); only the very first chunk replicates its frame 0. Spatial padding stays replicate.
        1x1x1 convs (post_quant_conv, conv_shortcut) need no cache.
      * upsamplers: only the first chunk's frame 0 (= video frame 0) is upsampled spatially only; every frame of
        a later chunk is upsampled by the full factor. Chunk of n frames -> 1 + 2(n-1) (first) or 2n (later).
      * mid-block attention: K, V of all earlier latent frames are kept; the chunk's queries see all cached keys
        and the chunk's own keys of frames <= their frame (frame-causal, so nothing of a later chunk is needed).
        This is exact for the attention itself (the mid block is NOT run separately on the whole latent).
      * GroupNorm (gn_stats):
          "global": every GroupNorm uses the statistics of its FULL (unchunked) activation: `stats`, or if None
                    recorded from a full decode first (two-pass). Result == decode() up to float rounding.
          "chunk" : every GroupNorm uses the statistics of the chunk's own activation at that layer (single
                    pass, bounded memory). The cached conv frames and attention K/V are those computed in their
                    own chunk (never recomputed). Result != decode().
    The latent chunk [t0, t1) yields video frames chunk_video_frames(cfg, t0, t1); they are concatenated.
    Returns (raw, frames, info) with info["chunks"] = [[t0, t1, f0, f1], ...] and info["run"].
    """
    assert gn_stats in ("global", "chunk")
    p = _cast(params, dtype)
    z = z.to(dtype)
    if gn_stats == "global":
        if stats is None:
            stats = full_gn_stats(params, z, cfg, dtype)
        run = DecodeRun(cfg, "fixed", stats=stats, keep=keep)
    else:
        run = DecodeRun(cfg, "self", keep=keep)
    T = z.shape[2]
    outs, chunks = [], []
    for t0 in range(0, T, chunk_latent_frames):
        t1 = min(T, t0 + chunk_latent_frames)
        y = _decoder_forward(run, p, z[:, :, t0:t1])
        f0, f1 = chunk_video_frames(cfg, t0, t1)
        assert y.shape[2] == f1 - f0, (y.shape, f0, f1)
        outs.append(y)
        chunks.append([t0, t1, f0, f1])
        run.first_chunk = False
    raw = torch.cat(outs, dim=2)
    return raw, postprocess(raw), {"chunks": chunks, "run": run}


def mid_block_attention(params, x: torch.Tensor, cfg: HunyuanVideoVAEConfig, dtype=torch.float32,
                        causal: bool = True) -> torch.Tensor:
    """The mid-block attention alone (GN with the full tensor's stats, frame-causal; residual included).
    causal=False drops the mask (only for checking that the mask matters)."""
    p = _cast(params, dtype)
    x = x.to(dtype)
    prefix = "decoder.mid_block.attentions.0"
    if causal:
        return _attention_forward(DecodeRun(cfg, "self"), p, prefix, x, cfg.norm_num_groups)
    B, C, T, H, W = x.shape
    tok = x.permute(0, 2, 3, 4, 1).reshape(B, T * H * W, C)
    mean, var = group_norm_stats(tok.transpose(1, 2), cfg.norm_num_groups)
    normed = group_norm_apply(tok.transpose(1, 2), mean, var, p[prefix + ".group_norm.weight"],
                              p[prefix + ".group_norm.bias"], cfg.norm_num_groups).transpose(1, 2)
    q, k, v = (F.linear(normed, p[f"{prefix}.{n}.weight"], p[f"{prefix}.{n}.bias"]) for n in ("to_q", "to_k", "to_v"))
    o = attention_single_head(q, k, v, torch.ones(T * H * W, T * H * W, dtype=torch.bool))
    o = F.linear(o, p[prefix + ".to_out.0.weight"], p[prefix + ".to_out.0.bias"]) + tok
    return o.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3).contiguous()
