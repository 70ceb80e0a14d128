"""PyTorch reference of the HunyuanVideo video DiT (diffusers `HunyuanVideoTransformer3DModel` semantics),
written from shared/spec/hunyuan-video.md (sections 1, 2, 3, 6, 7, 9) and shared/spec/sta.md (sections 2-4).

Scope: a readable, dense, small-shape reference that the C++/CUDA implementation is checked against
(golden files written by make_dit_goldens.py). It is not fast: attention is a dense matmul with an explicit
boolean mask.

Precision model
---------------
`HunyuanVideoTransformer(cfg, params, dtype=torch.float32, act_dtype=None)`:
- `dtype` is the compute dtype (float32 by default; float64 is accepted to measure the fp32 reference's own
  rounding error).
- `act_dtype=torch.bfloat16` emulates a bf16 model: weights and every activation are rounded to bf16 at the
  boundary of each op (one rounding per op, below), while the op itself computes in `dtype` (fp32). That is
  the contract of the project's kernels (fp32 accumulation / fp32 norms, bf16 storage). The spec's fp32
  islands stay fp32: the timestep sinusoid, LayerNorm/RMSNorm statistics + modulation, RoPE, softmax, the
  refiner's masked mean, the sampler's Euler step. Ops (each ends in one rounding): every Linear (bias, and a
  GELU-tanh fused into it where the model applies one right after), SiLU, LayerNorm(+affine or +adaLN
  modulation), RMSNorm, RoPE, attention (QK^T, softmax, PV all fp32), gated residual add (x + g*y), the vec
  sum, the masked mean.

All tensors are [batch, ...] with the batch first. Token sequences are [B, S, D]; attention heads are
[B, heads, S, head_dim] with the head-major feature layout feature = head * head_dim + d.
"""

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

LN_EPS = 1e-6  # spec 1: every LayerNorm (affine or not) and RMSNorm uses eps 1e-6
RMS_EPS = 1e-6
SINUSOID_DIM = 256  # spec 2.0
SINUSOID_MAX_PERIOD = 10000.0


# ---------------------------------------------------------------------------------------------------------
# Configuration (spec 1; diffusers config.json field names)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class HunyuanVideoConfig:
    """Defaults are the released 13B T2V model (spec 1)."""

    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20  # dual-stream blocks
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: Tuple[int, int, int] = (16, 56, 56)
    image_condition_type: Optional[str] = None

    def __post_init__(self):
        self.rope_axes_dim = tuple(int(v) for v in self.rope_axes_dim)
        assert self.qk_norm == "rms_norm", "only qk_norm='rms_norm' is specified"
        assert sum(self.rope_axes_dim) == self.attention_head_dim, "rope_axes_dim must sum to the head dim"
        assert all(d % 2 == 0 for d in self.rope_axes_dim), "RoPE axis dims must be even (pairs)"
        assert self.image_condition_type is None, "only T2V (image_condition_type None) is specified"

    @property
    def inner_dim(self) -> int:  # D
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:  # dual-block FF and single-block MLP hidden size
        return int(self.inner_dim * self.mlp_ratio)

    @property
    def refiner_mlp_dim(self) -> int:
        # Choice: diffusers builds the token refiner with its own default mlp_ratio 4.0 (the model's
        # mlp_ratio is not passed to it). Identical for every config used here (mlp_ratio 4).
        return int(self.inner_dim * 4.0)

    @property
    def patch_volume(self) -> int:
        return self.patch_size_t * self.patch_size * self.patch_size

    def to_json_dict(self) -> dict:
        d = OrderedDict(_class_name="HunyuanVideoTransformer3DModel")
        for k, v in asdict(self).items():
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_json_dict(cls, d: dict) -> "HunyuanVideoConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------------------
# Weight names and shapes (spec 3, diffusers state-dict names; Linear weights are [out, in])
# ---------------------------------------------------------------------------------------------------------


def _linear(sd, name, n_out, n_in, bias=True):
    sd[name + ".weight"] = (n_out, n_in)
    if bias:
        sd[name + ".bias"] = (n_out,)


def param_shapes(cfg: HunyuanVideoConfig) -> "OrderedDict[str, Tuple[int, ...]]":
    """Every tensor of the diffusers state dict, in a fixed order, as name -> shape (nothing allocated)."""
    D, M, Mr = cfg.inner_dim, cfg.mlp_dim, cfg.refiner_mlp_dim
    Dh = cfg.attention_head_dim
    sd = OrderedDict()

    # Top level: patch embedding (Conv3d weight [D, C, pt, ph, pw]), condition embedders.
    sd["x_embedder.proj.weight"] = (D, cfg.in_channels, cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
    sd["x_embedder.proj.bias"] = (D,)
    _linear(sd, "time_text_embed.timestep_embedder.linear_1", D, SINUSOID_DIM)
    _linear(sd, "time_text_embed.timestep_embedder.linear_2", D, D)
    if cfg.guidance_embeds:
        _linear(sd, "time_text_embed.guidance_embedder.linear_1", D, SINUSOID_DIM)
        _linear(sd, "time_text_embed.guidance_embedder.linear_2", D, D)
    _linear(sd, "time_text_embed.text_embedder.linear_1", D, cfg.pooled_projection_dim)
    _linear(sd, "time_text_embed.text_embedder.linear_2", D, D)

    # Token refiner (context_embedder).
    ce = "context_embedder."
    _linear(sd, ce + "time_text_embed.timestep_embedder.linear_1", D, SINUSOID_DIM)
    _linear(sd, ce + "time_text_embed.timestep_embedder.linear_2", D, D)
    _linear(sd, ce + "time_text_embed.text_embedder.linear_1", D, cfg.text_embed_dim)
    _linear(sd, ce + "time_text_embed.text_embedder.linear_2", D, D)
    _linear(sd, ce + "proj_in", D, cfg.text_embed_dim)
    for i in range(cfg.num_refiner_layers):
        p = f"{ce}token_refiner.refiner_blocks.{i}."
        sd[p + "norm1.weight"] = (D,)
        sd[p + "norm1.bias"] = (D,)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            _linear(sd, p + "attn." + proj, D, D)
        sd[p + "norm2.weight"] = (D,)
        sd[p + "norm2.bias"] = (D,)
        _linear(sd, p + "ff.net.0.proj", Mr, D)
        _linear(sd, p + "ff.net.2", D, Mr)
        _linear(sd, p + "norm_out.linear", 2 * D, D)  # rows [gate_msa; gate_mlp]

    # Dual-stream blocks.
    for i in range(cfg.num_layers):
        p = f"transformer_blocks.{i}."
        _linear(sd, p + "norm1.linear", 6 * D, D)  # image modulation, 6 chunks (spec 2.6)
        _linear(sd, p + "norm1_context.linear", 6 * D, D)  # text modulation
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            _linear(sd, p + "attn." + proj, D, D)
        for nrm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            sd[p + "attn." + nrm + ".weight"] = (Dh,)
        _linear(sd, p + "attn.to_out.0", D, D)
        _linear(sd, p + "attn.to_add_out", D, D)
        for ff in ("ff", "ff_context"):
            _linear(sd, p + ff + ".net.0.proj", M, D)
            _linear(sd, p + ff + ".net.2", D, M)

    # Single-stream blocks.
    for j in range(cfg.num_single_layers):
        p = f"single_transformer_blocks.{j}."
        _linear(sd, p + "norm.linear", 3 * D, D)  # (shift, scale, gate)
        for proj in ("to_q", "to_k", "to_v"):
            _linear(sd, p + "attn." + proj, D, D)
        sd[p + "attn.norm_q.weight"] = (Dh,)
        sd[p + "attn.norm_k.weight"] = (Dh,)
        _linear(sd, p + "proj_mlp", M, D)
        _linear(sd, p + "proj_out", D, D + M)  # input concat(attn D, gelu(mlp) M)

    # Final layer: rows [scale; shift] (diffusers order), then the output projection.
    _linear(sd, "norm_out.linear", 2 * D, D)
    _linear(sd, "proj_out", cfg.patch_volume * cfg.out_channels, D)
    return sd


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def param_count(cfg: HunyuanVideoConfig) -> int:
    """Number of parameters of the diffusers state dict, from shapes only (spec 1: 12,821,012,544 for 13B)."""
    return sum(_numel(s) for s in param_shapes(cfg).values())


def param_breakdown(cfg: HunyuanVideoConfig) -> Dict[str, int]:
    """Parameter counts per group, as spec 1 reports them, plus the tensor count."""
    groups = OrderedDict(
        (k, 0)
        for k in ("transformer_blocks", "single_transformer_blocks", "context_embedder", "time_text_embed",
                  "x_embedder", "norm_out", "proj_out")
    )
    shapes = param_shapes(cfg)
    for name, s in shapes.items():
        groups[name.split(".")[0]] += _numel(s)
    groups["tensors"] = len(shapes)
    return groups


# ---------------------------------------------------------------------------------------------------------
# Deterministic random weights
# ---------------------------------------------------------------------------------------------------------


def init_random(cfg: HunyuanVideoConfig, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """Deterministic random weights (fp32 tensors whose values are exactly representable in bf16).

    - Linear / Conv3d weights: N(0, 1) / sqrt(fan_in), so each projection keeps activations O(1) and every
      block (gates O(0.5)) changes the streams noticeably: a wrong op shows up in the outputs.
    - 1-D norm weights (RMSNorm q/k, the refiner's affine LayerNorms): 1 + 0.1 N(0, 1).
    - Every bias (Linear and LayerNorm): 0.1 N(0, 1).
    - Finally every value is rounded to bf16, so the bf16 variant of the model uses exactly the same weights
      as the fp32 one (no weight-rounding ambiguity in the bf16 parity test).
    Tensors are drawn in param_shapes() order from one torch.Generator seeded with `seed`.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = OrderedDict()
    for name, shape in param_shapes(cfg).items():
        z = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith(".bias"):
            t = 0.1 * z
        elif len(shape) == 1:  # RMSNorm / affine LayerNorm weight
            t = 1.0 + 0.1 * z
        else:
            t = z / math.sqrt(_numel(shape[1:]))
        out[name] = t.to(torch.bfloat16).to(torch.float32)
    return out


# ---------------------------------------------------------------------------------------------------------
# Small math pieces
# ---------------------------------------------------------------------------------------------------------


def timestep_sinusoid(t: torch.Tensor, dim: int = SINUSOID_DIM, max_period: float = SINUSOID_MAX_PERIOD):
    """Spec 2.0: f_k = exp(-ln(max_period) * k / half), emb = [cos(t f_k) for all k, sin(t f_k) for all k].
    Always fp32 (whatever the model dtype); t: [B] (float, 0..1000 scale).

    Choice (the spec says "fp32" but not how each fp32 value is rounded, and the output is sensitive to it:
    the angles reach ~6000 rad for the guidance, so a 1-ulp change of f_k moves the DiT output by ~4e-4):
      f_k   = fp32(exp(-ln(max_period) * k / half))  evaluated in float64, rounded once to fp32;
      angle = fp32(t * f_k)                          one IEEE fp32 multiply of fp32 operands;
      emb   = fp32(cos(angle)), fp32(sin(angle))     evaluated in float64, rounded once.
    Every step is then reproducible bit-exactly in C++ (double exp/cos/sin, float multiply). diffusers'
    own fp32 exponent (-ln(1e4) * k computed in fp32) differs from this f_k by 1 ulp for most k."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half).to(torch.float32)
    ang = t.to(torch.float32)[:, None] * freqs[None, :]  # fp32 product
    ang = ang.to(torch.float64)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1).to(torch.float32)


def rope_tables(cfg: HunyuanVideoConfig, canvas: Sequence[int], device=None):
    """Spec 2.5: 3-D RoPE tables for the raster-ordered (t, h, w) image tokens of a canvas in tokens.

    Returns (cos, sin), each [N_img, head_dim/2] fp32: entry [n, j] is the angle of pair j (features 2j, 2j+1)
    of token n. Pairs [0, d_t/2) carry t, then d_h/2 pairs for h, then d_w/2 for w. (The spec's [N, head_dim]
    repeat-interleaved table is this one with every column duplicated.)
    Choice: the angles pos * theta^(-2k/d) are formed in float64 and the cos/sin rounded once to fp32 (what
    diffusers does on CPU: its frequencies are float64). An fp32 computation differs by <= ~1e-6 here.
    """
    T, H, W = (int(c) for c in canvas)
    grids = torch.meshgrid(
        torch.arange(T, dtype=torch.float64, device=device), torch.arange(H, dtype=torch.float64, device=device),
        torch.arange(W, dtype=torch.float64, device=device), indexing="ij",
    )
    angles = []
    for axis, d in enumerate(cfg.rope_axes_dim):
        k = torch.arange(d // 2, dtype=torch.float64, device=device)
        freqs = 1.0 / (float(cfg.rope_theta) ** (2.0 * k / d))
        pos = grids[axis].reshape(-1)
        angles.append(pos[:, None] * freqs[None, :])
    ang = torch.cat(angles, dim=1)
    return torch.cos(ang).to(torch.float32), torch.sin(ang).to(torch.float32)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Spec 2.5, interleaved adjacent pairs: out[2j] = x[2j] c_j - x[2j+1] s_j, out[2j+1] = x[2j+1] c_j + x[2j] s_j.
    x: [B, heads, N, Dh]; cos, sin: [N, Dh/2] (same table for every head)."""
    xr = x.reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xr[..., 0], xr[..., 1]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.reshape(x.shape)


def layer_norm(x, weight=None, bias=None, eps=LN_EPS):
    """LayerNorm over the last dim (biased variance), optional affine."""
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def modulate(x_normed, shift, scale):
    """adaLN: y = LN(x) * (1 + scale) + shift, with per-batch [B, D] shift/scale broadcast over the tokens."""
    return x_normed * (1.0 + scale[:, None, :]) + shift[:, None, :]


def rms_norm(x, weight, eps=RMS_EPS):
    """Spec 2.6 step 4: RMSNorm over the last dim (head_dim) with a weight."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def masked_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(Dh) masked) v with a boolean keep-mask broadcastable to [B, H, Sq, Sk].
    Computed in the dtype of q (fp32 by default): dense scores, -inf where masked, softmax, PV.
    Hook for training code (tools/demo): an attention object whose mask() returns a callable instead of a
    tensor computes the attention itself (e.g. SDPA or FlexAttention); the reference path is unchanged."""
    if callable(mask):
        return mask(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.matmul(p, v)


# ---------------------------------------------------------------------------------------------------------
# Sliding Tile Attention mask (sta.md sections 2-4), on raster-ordered image tokens
# ---------------------------------------------------------------------------------------------------------

Window = Tuple[int, int, int]


def sta_grid(canvas: Sequence[int], tile: Sequence[int]) -> Tuple[int, int, int]:
    """Tiles per axis. A canvas the tile does not divide is padded up to whole tiles (sta.md section 7);
    padded positions do not exist among the raster-ordered tokens used here, so they are never keys."""
    return tuple((int(c) + int(t) - 1) // int(t) for c, t in zip(canvas, tile))


def sta_visible(q_tile: Sequence[int], k_tile: Sequence[int], grid: Sequence[int], window: Sequence[int]) -> bool:
    """sta.md section 3, verbatim: r_d = w_d // 2, c_d = clamp(q_d, r_d, n_d - 1 - r_d), key tile visible iff
    |c_d - k_d| <= r_d on all three axes. The clamp is max-then-min; when r_d > n_d - 1 - r_d (2r+1 >= n) the
    window covers the whole axis for either clamp order. An even w only makes sense as 'whole axis', but the
    formula is applied as written (w = 2 on an axis of 4 tiles gives r = 1: 3 tiles)."""
    for d in range(3):
        r = int(window[d]) // 2
        c = min(max(int(q_tile[d]), r), int(grid[d]) - 1 - r)
        if abs(c - int(k_tile[d])) > r:
            return False
    return True


def sta_image_mask(canvas: Sequence[int], tile: Sequence[int], window: Sequence[int]) -> torch.Tensor:
    """[N_img, N_img] bool visibility between raster-ordered image tokens (query row, key column).
    Built per axis from sta_visible (the visibility factorizes over axes), then gathered per token."""
    grid = sta_grid(canvas, tile)
    T, H, W = (int(c) for c in canvas)
    axis_tables = []
    for d in range(3):
        n = grid[d]
        tab = torch.zeros(n, n, dtype=torch.bool)
        for q in range(n):
            for k in range(n):
                qt, kt, win = [0, 0, 0], [0, 0, 0], [1, 1, 1]
                g = [1, 1, 1]
                qt[d], kt[d], win[d], g[d] = q, k, int(window[d]), n
                tab[q, k] = sta_visible(qt, kt, g, win)
        axis_tables.append(tab)
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    coords = [t.reshape(-1) // int(tile[0]), h.reshape(-1) // int(tile[1]), w.reshape(-1) // int(tile[2])]
    m = None
    for d in range(3):
        md = axis_tables[d][coords[d]][:, coords[d]]
        m = md if m is None else (m & md)
    return m


def key_valid_mask(n_img: int, text_slots: int, text_lens: Sequence[int]) -> torch.Tensor:
    """Spec 2.4 (diffusers semantics): key j of the joint [image; text] sequence is valid iff
    j < N_img + text_len[b]; text_len = number of ones in the text mask (right padding assumed)."""
    idx = torch.arange(n_img + text_slots)
    return torch.stack([idx < n_img + int(tl) for tl in text_lens])  # [B, S]


class DenseAttention:
    """Main-block mask (spec 2.4): every query sees all image keys and the valid text keys."""

    def mask(self, layer: int, heads: int, canvas, text_slots: int, text_lens) -> torch.Tensor:
        n_img = _prod(canvas)
        return key_valid_mask(n_img, text_slots, text_lens)[:, None, None, :]  # [B, 1, 1, S]

    def describe(self):
        return {"mode": "dense"}


WindowSpec = Union[Callable[[int, int], Sequence[int]], Dict[str, Sequence[int]], Sequence[Sequence[int]]]


class StaAttention:
    """Main-block STA mask (sta.md sections 3-4) over the joint [raster image tokens; text slots] sequence.

    windows: per (layer, head) window in tiles, one of
      - a callable (layer, head) -> (wt, wh, ww),
      - a dict keyed "<layer>_<head>" (sta.md section 6 format without the step),
      - a list of per-head windows used for every layer.
    Layers count the dual blocks first (0 .. num_layers-1), then the single blocks.
    Rules: image q -> image k: sta_visible on the tiles; image q -> text k: valid text only;
    text q -> every image key and the valid text keys; padded text keys: masked for everyone.
    Computing attention in raster order with this mask gives the same per-token outputs as a kernel running
    in tiled order followed by untile (attention is permutation-equivariant).
    """

    def __init__(self, tile: Sequence[int], windows: WindowSpec):
        self.tile = tuple(int(v) for v in tile)
        self.windows = windows
        self._cache = {}

    def window(self, layer: int, head: int) -> Window:
        w = self.windows
        if callable(w):
            out = w(layer, head)
        elif isinstance(w, dict):
            out = w[f"{layer}_{head}"]
        else:
            out = w[head]
        out = tuple(int(v) for v in out)
        assert len(out) == 3 and all(v >= 1 for v in out), f"bad window {out}"
        return out

    def mask(self, layer: int, heads: int, canvas, text_slots: int, text_lens) -> torch.Tensor:
        n_img = _prod(canvas)
        kv = key_valid_mask(n_img, text_slots, text_lens)  # [B, S]
        B, S = kv.shape
        m = kv[:, None, None, :].expand(B, heads, S, S).clone()
        for h in range(heads):
            win = self.window(layer, h)
            key = (tuple(canvas), win)
            if key not in self._cache:
                self._cache[key] = sta_image_mask(canvas, self.tile, win)
            m[:, h, :n_img, :n_img] &= self._cache[key]
        return m

    def describe(self, num_layers: int, heads: int):
        return {
            "mode": "sta",
            "tile": list(self.tile),
            "windows": {f"{l}_{h}": list(self.window(l, h)) for l in range(num_layers) for h in range(heads)},
        }


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


# ---------------------------------------------------------------------------------------------------------
# TeaCache (spec 7)
# ---------------------------------------------------------------------------------------------------------

TEACACHE_HUNYUAN_COEFFS = [7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02]


def teacache_poly(x: float) -> float:
    """numpy.poly1d(TEACACHE_HUNYUAN_COEFFS)(x): Horner in float64, highest power first."""
    y = 0.0
    for c in TEACACHE_HUNYUAN_COEFFS:
        y = y * x + c
    return y


class TeaCache:
    """Spec 7 state for one generation: counter over the forward calls, accumulator, previous modulated
    input, residual cache. decisions[i] is True when call i computed the blocks."""

    def __init__(self, rel_l1_thresh: float, num_steps: int):
        self.thresh = float(rel_l1_thresh)
        self.num_steps = int(num_steps)
        self.cnt = 0
        self.acc = 0.0
        self.prev = None
        self.residual = None
        self.decisions: List[bool] = []
        self.rels: List[float] = []  # rel L1 per call (NaN on the first call)
        self.accs: List[float] = []  # accumulator value compared with the threshold (0 where not compared)

    def decide(self, m: torch.Tensor) -> bool:
        rel = float("nan")
        if self.prev is not None:
            # Means over all elements, one scalar (computed in the model's compute dtype).
            rel = float((m - self.prev).abs().mean() / self.prev.abs().mean())
        if self.cnt == 0 or self.cnt == self.num_steps - 1:
            compute = True
            self.acc = 0.0
            compared = 0.0
        else:
            self.acc += teacache_poly(rel)
            compared = self.acc
            if self.acc < self.thresh:
                compute = False
            else:
                compute = True
                self.acc = 0.0
        self.prev = m  # every call, skipped or not
        self.cnt += 1
        if self.cnt == self.num_steps:
            self.cnt = 0
        self.decisions.append(compute)
        self.rels.append(rel)
        self.accs.append(compared)
        return compute


# ---------------------------------------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------------------------------------


class HunyuanVideoTransformer:
    """Functional HunyuanVideo DiT over a flat dict of diffusers-named weights (spec 2, in order)."""

    def __init__(self, cfg: HunyuanVideoConfig, params: Dict[str, torch.Tensor], dtype=torch.float32,
                 act_dtype=None):
        self.cfg = cfg
        self.dtype = dtype
        self.act_dtype = act_dtype
        shapes = param_shapes(cfg)
        missing = [k for k in shapes if k not in params]
        extra = [k for k in params if k not in shapes]
        assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
        self.p = {}
        for k, s in shapes.items():
            t = params[k]
            assert tuple(t.shape) == tuple(s), f"{k}: shape {tuple(t.shape)} != {s}"
            self.p[k] = self.rnd(t.to(dtype))

    # -- rounding at op boundaries (identity in fp32 mode) --
    def rnd(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_dtype is None or self.act_dtype == self.dtype:
            return x
        return x.to(self.act_dtype).to(self.dtype)

    def linear(self, x, name, act=None):
        """Linear (weight [out, in] + bias), optional fused GELU-tanh, one rounding."""
        y = torch.matmul(x, self.p[name + ".weight"].t()) + self.p[name + ".bias"]
        if act == "gelu_tanh":
            y = gelu_tanh(y)
        return self.rnd(y)

    # -- op groups that a subclass may fuse (tools/demo/common.FusedTransformer trains with fused kernels);
    # here they are composed from the plain ops above, in the spec's order --
    def ln_modulate(self, x, shift, scale):
        """adaLN: LN(x) * (1 + scale) + shift, one rounding."""
        return self.rnd(modulate(layer_norm(x), shift, scale))

    def gated_add(self, x, gate, y):
        """Gated residual: x + gate * y (gate [B, D] broadcast over the tokens), one rounding."""
        return self.rnd(x + gate[:, None, :] * y)

    def silu(self, x):
        return self.rnd(F.silu(x))

    def mlp2(self, prefix, x):
        """Linear - SiLU - Linear (TimestepEmbedding / PixArtAlphaTextProjection)."""
        return self.linear(self.silu(self.linear(x, prefix + ".linear_1")), prefix + ".linear_2")

    def heads(self, x):
        B, S, _ = x.shape
        return x.view(B, S, self.cfg.num_attention_heads, self.cfg.attention_head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(x):
        B, H, S, Dh = x.shape
        return x.transpose(1, 2).reshape(B, S, H * Dh)

    # -- 2.0 / 2.1 conditioning vector --
    def condition(self, timestep, guidance, pooled):
        t_emb = self.mlp2("time_text_embed.timestep_embedder", self.rnd(timestep_sinusoid(timestep).to(self.dtype)))
        total = t_emb
        if self.cfg.guidance_embeds:
            assert guidance is not None, "guidance_embeds=True needs a guidance value"
            g_emb = self.mlp2("time_text_embed.guidance_embedder",
                              self.rnd(timestep_sinusoid(guidance).to(self.dtype)))
            total = total + g_emb
        p_emb = self.mlp2("time_text_embed.text_embedder", self.rnd(pooled.to(self.dtype)))
        return self.rnd(total + p_emb)  # vec (diffusers temb): a plain sum

    # -- 2.2 patch embedding --
    def patch_embed(self, x):
        """Conv3d with kernel = stride = patch, as a Linear over (c, kt, kh, kw)-flattened patches; tokens in
        raster (t, h, w) order."""
        cfg = self.cfg
        B, C, T, H, W = x.shape
        pt, ph = cfg.patch_size_t, cfg.patch_size
        assert T % pt == 0 and H % ph == 0 and W % ph == 0, "latent not divisible by the patch size"
        Tn, Hn, Wn = T // pt, H // ph, W // ph
        xp = x.reshape(B, C, Tn, pt, Hn, ph, Wn, ph).permute(0, 2, 4, 6, 1, 3, 5, 7)
        xp = xp.reshape(B, Tn * Hn * Wn, C * pt * ph * ph)
        w = self.p["x_embedder.proj.weight"].reshape(cfg.inner_dim, -1)
        return self.rnd(torch.matmul(xp, w.t()) + self.p["x_embedder.proj.bias"]), (Tn, Hn, Wn)

    # -- 2.3 token refiner --
    def refine_text(self, text, text_mask, timestep):
        cfg = self.cfg
        ce = "context_embedder."
        mask_b = text_mask > 0.5  # [B, L] bool
        mf = text_mask.to(torch.float32)[..., None]
        # 1. masked mean of the raw LLM states over valid tokens, fp32, cast back.
        c_text = (text.to(torch.float32) * mf).sum(dim=1) / mf.sum(dim=1)
        c_text = self.rnd(c_text.to(self.dtype))
        # 2. refiner conditioning: its own time MLP + text projection (no guidance, no CLIP vector).
        c = self.mlp2(ce + "time_text_embed.timestep_embedder", self.rnd(timestep_sinusoid(timestep).to(self.dtype)))
        c = self.rnd(c + self.mlp2(ce + "time_text_embed.text_embedder", c_text))
        silu_c = self.silu(c)
        # 3. input projection of the text states.
        x = self.linear(text, ce + "proj_in")
        # 4. refiner mask: M[i, j] = mask[i] & mask[j], column 0 forced True.
        M = mask_b[:, None, :, None] & mask_b[:, None, None, :]
        M[..., 0] = True
        # 5. refiner blocks: gates only, affine LayerNorms, SiLU MLP, no qk-norm, no RoPE.
        for i in range(cfg.num_refiner_layers):
            p = f"{ce}token_refiner.refiner_blocks.{i}."
            gate_msa, gate_mlp = self.linear(silu_c, p + "norm_out.linear").chunk(2, dim=-1)
            h = self.rnd(layer_norm(x, self.p[p + "norm1.weight"], self.p[p + "norm1.bias"]))
            q = self.heads(self.linear(h, p + "attn.to_q"))
            k = self.heads(self.linear(h, p + "attn.to_k"))
            v = self.heads(self.linear(h, p + "attn.to_v"))
            o = self.merge_heads(self.rnd(masked_attention(q, k, v, M)))
            o = self.linear(o, p + "attn.to_out.0")
            x = self.gated_add(x, gate_msa, o)
            h = self.rnd(layer_norm(x, self.p[p + "norm2.weight"], self.p[p + "norm2.bias"]))
            f = self.linear(self.silu(self.linear(h, p + "ff.net.0.proj")), p + "ff.net.2")
            x = self.gated_add(x, gate_mlp, f)
        return x  # 6. [B, L, D]

    def _qk_prepare(self, q, k, q_norm, k_norm, cos=None, sin=None, n_img=None):
        """RMSNorm per head (rounded), then RoPE on the first n_img tokens (rounded); spec 2.6 steps 4-5."""
        q = self.rnd(rms_norm(q, self.p[q_norm]))
        k = self.rnd(rms_norm(k, self.p[k_norm]))
        if cos is not None:
            n = q.shape[2] if n_img is None else n_img
            q = torch.cat([self.rnd(apply_rope(q[:, :, :n], cos, sin)), q[:, :, n:]], dim=2)
            k = torch.cat([self.rnd(apply_rope(k[:, :, :n], cos, sin)), k[:, :, n:]], dim=2)
        return q, k

    # -- 2.6 dual-stream block --
    def dual_block(self, i, img, txt, silu_vec, cos, sin, mask):
        p = f"transformer_blocks.{i}."
        sh1, sc1, g1, sh2, sc2, g2 = self.linear(silu_vec, p + "norm1.linear").chunk(6, dim=-1)
        c_sh1, c_sc1, c_g1, c_sh2, c_sc2, c_g2 = self.linear(silu_vec, p + "norm1_context.linear").chunk(6, dim=-1)
        hi = self.ln_modulate(img, sh1, sc1)
        ht = self.ln_modulate(txt, c_sh1, c_sc1)
        qi, ki = self.heads(self.linear(hi, p + "attn.to_q")), self.heads(self.linear(hi, p + "attn.to_k"))
        vi = self.heads(self.linear(hi, p + "attn.to_v"))
        qt, kt = self.heads(self.linear(ht, p + "attn.add_q_proj")), self.heads(self.linear(ht, p + "attn.add_k_proj"))
        vt = self.heads(self.linear(ht, p + "attn.add_v_proj"))
        qi, ki = self._qk_prepare(qi, ki, p + "attn.norm_q.weight", p + "attn.norm_k.weight", cos, sin)
        qt, kt = self._qk_prepare(qt, kt, p + "attn.norm_added_q.weight", p + "attn.norm_added_k.weight")
        n_img = img.shape[1]
        o = self.rnd(masked_attention(torch.cat([qi, qt], 2), torch.cat([ki, kt], 2), torch.cat([vi, vt], 2), mask))
        o = self.merge_heads(o)
        img = self.gated_add(img, g1, self.linear(o[:, :n_img], p + "attn.to_out.0"))
        txt = self.gated_add(txt, c_g1, self.linear(o[:, n_img:], p + "attn.to_add_out"))
        hi = self.ln_modulate(img, sh2, sc2)
        ht = self.ln_modulate(txt, c_sh2, c_sc2)
        fi = self.linear(self.linear(hi, p + "ff.net.0.proj", act="gelu_tanh"), p + "ff.net.2")
        ft = self.linear(self.linear(ht, p + "ff_context.net.0.proj", act="gelu_tanh"), p + "ff_context.net.2")
        img = self.gated_add(img, g2, fi)
        txt = self.gated_add(txt, c_g2, ft)
        return img, txt

    # -- 2.7 single-stream block --
    def single_block(self, j, x, n_img, silu_vec, cos, sin, mask):
        p = f"single_transformer_blocks.{j}."
        shift, scale, gate = self.linear(silu_vec, p + "norm.linear").chunk(3, dim=-1)
        h = self.ln_modulate(x, shift, scale)
        q, k = self.heads(self.linear(h, p + "attn.to_q")), self.heads(self.linear(h, p + "attn.to_k"))
        v = self.heads(self.linear(h, p + "attn.to_v"))
        mlp = self.linear(h, p + "proj_mlp", act="gelu_tanh")
        q, k = self._qk_prepare(q, k, p + "attn.norm_q.weight", p + "attn.norm_k.weight", cos, sin, n_img)
        o = self.merge_heads(self.rnd(masked_attention(q, k, v, mask)))  # no output projection (pre_only)
        out = self.linear(torch.cat([o, mlp], dim=-1), p + "proj_out")
        return self.gated_add(x, gate, out)

    # -- 2.8 final layer + unpatchify --
    def final_layer(self, img, silu_vec, latent_shape):
        scale, shift = self.linear(silu_vec, "norm_out.linear").chunk(2, dim=-1)  # diffusers rows [scale; shift]
        y = self.ln_modulate(img, shift, scale)
        y = self.linear(y, "proj_out")
        return self.unpatchify(y, latent_shape)

    def unpatchify(self, y, latent_shape):
        cfg = self.cfg
        B, _, T, H, W = latent_shape
        pt, ph = cfg.patch_size_t, cfg.patch_size
        Tn, Hn, Wn = T // pt, H // ph, W // ph
        C = cfg.out_channels
        y = y.reshape(B, Tn, Hn, Wn, C, pt, ph, ph).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return y.reshape(B, C, T, H, W)

    # -- TeaCache indicator (spec 7) --
    def teacache_indicator(self, img, silu_vec):
        """Modulated input of dual block 0's image stream: LN(img) * (1 + scale1) + shift1."""
        sh1, sc1 = self.linear(silu_vec, "transformer_blocks.0.norm1.linear").chunk(6, dim=-1)[:2]
        return self.ln_modulate(img, sh1, sc1)

    # -- the whole forward (spec 2 order) --
    def forward(self, x, timestep, text, text_mask, pooled, guidance=None, attention=None,
                capture: Optional[dict] = None, teacache: Optional[TeaCache] = None):
        """x [B, C, T, H, W]; timestep [B] (0..1000 scale); text [B, L, text_embed_dim]; text_mask [B, L] (1 =
        valid, right-padded); pooled [B, pooled_projection_dim]; guidance [B] (already x1000, e.g. 6016.0).
        attention: DenseAttention() (default) or StaAttention(...).
        capture: optional dict filled with intermediates (see keys below).
        Returns the velocity [B, out_channels, T, H, W] in the compute dtype."""
        cfg = self.cfg
        attention = attention or DenseAttention()
        dt = self.dtype
        x = self.rnd(x.to(dt))
        text = self.rnd(text.to(dt))
        timestep = timestep.to(torch.float32)
        guidance = None if guidance is None else guidance.to(torch.float32)

        vec = self.condition(timestep, guidance, pooled)  # 2.0, 2.1
        silu_vec = self.silu(vec)  # every consumer: SiLU(vec) then its own Linear
        img, canvas = self.patch_embed(x)  # 2.2
        n_img = img.shape[1]
        if capture is not None:
            capture["t_sinusoid"] = timestep_sinusoid(timestep)
            capture["vec"] = vec
            capture["img_embed"] = img

        compute = True
        if teacache is not None:
            compute = teacache.decide(self.teacache_indicator(img, silu_vec))
        if not compute:
            img_final = self.rnd(img + teacache.residual)
        else:
            txt = self.refine_text(text, text_mask, timestep)  # 2.3
            L = txt.shape[1]
            text_lens = [int(round(float(v))) for v in text_mask.to(torch.float64).sum(dim=1)]
            cos, sin = rope_tables(cfg, canvas, device=x.device)  # 2.5
            cos, sin = cos.to(dt), sin.to(dt)
            if capture is not None:
                capture["txt_refined"] = txt
                capture["rope_cos"], capture["rope_sin"] = cos, sin
            H = cfg.num_attention_heads
            img0 = img
            for i in range(cfg.num_layers):  # 2.6
                mask = attention.mask(i, H, canvas, L, text_lens)
                if capture is not None:
                    capture[f"dual{i}_in_img"], capture[f"dual{i}_in_txt"] = img, txt
                img, txt = self.dual_block(i, img, txt, silu_vec, cos, sin, mask)
                if capture is not None:
                    capture[f"dual{i}_out_img"], capture[f"dual{i}_out_txt"] = img, txt
            seq = torch.cat([img, txt], dim=1)  # 2.7: [img; txt], concatenated once
            for j in range(cfg.num_single_layers):
                mask = attention.mask(cfg.num_layers + j, H, canvas, L, text_lens)
                if capture is not None:
                    capture[f"single{j}_in"] = seq
                seq = self.single_block(j, seq, n_img, silu_vec, cos, sin, mask)
                if capture is not None:
                    capture[f"single{j}_out"] = seq
            img_final = seq[:, :n_img]
            if teacache is not None:
                teacache.residual = img_final - img0  # image tokens after the last single block - after patch embed
        out = self.final_layer(img_final, silu_vec, x.shape)  # 2.8
        if capture is not None:
            capture["out"] = out
        return out


# ---------------------------------------------------------------------------------------------------------
# Scheduler and sampler (spec 6)
# ---------------------------------------------------------------------------------------------------------


def flow_match_sigmas(num_steps: int, shift: float):
    """s_i = 1 - i/N (i = 0..N-1), sigma_i = shift s_i / (1 + (shift - 1) s_i), sigma_N = 0 appended.
    Choice: formed in float64, then rounded once to fp32; timesteps t_i = sigma_i * 1000 multiplied in fp32
    (diffusers: fp32 sigmas * num_train_timesteps). Returns (sigmas [N+1] fp32, timesteps [N] fp32)."""
    s = [1.0 - i / num_steps for i in range(num_steps)]
    sig = [shift * si / (1.0 + (shift - 1.0) * si) for si in s] + [0.0]
    sigmas = torch.tensor(sig, dtype=torch.float64).to(torch.float32)
    timesteps = sigmas[:-1] * torch.tensor(1000.0, dtype=torch.float32)
    return sigmas, timesteps


@dataclass
class SampleResult:
    latents: List[torch.Tensor]  # latents after each step (fp32)
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    decisions: List[bool] = field(default_factory=list)  # TeaCache: True = blocks computed
    rels: List[float] = field(default_factory=list)
    accs: List[float] = field(default_factory=list)


def sample(model: HunyuanVideoTransformer, noise, text, text_mask, pooled, guidance, num_steps: int, shift: float,
           attention_for_step: Optional[Callable[[int], object]] = None, true_cfg_scale: float = 1.0,
           negative: Optional[dict] = None, teacache_thresh: Optional[float] = None) -> SampleResult:
    """Flow-matching Euler sampler (spec 6). The caller supplies the initial noise (golden files store it).
    - guidance: the embedded value as fed to the DiT ([B], e.g. 6016.0 for cfg 6.0; spec 6 bf16 note).
    - attention_for_step(i) -> DenseAttention/StaAttention for step i (per-step STA windows); None = dense.
    - true CFG: when true_cfg_scale > 1, `negative` = {"text", "text_mask", "pooled"} and each step runs two
      forwards: v = v_uncond + s (v_cond - v_uncond).
    - teacache_thresh: enables TeaCache (spec 7) with one forward per step (not combinable with true CFG).
    The Euler update x <- x + (sigma_{i+1} - sigma_i) v is done in fp32; timesteps are fed in fp32."""
    sigmas, timesteps = flow_match_sigmas(num_steps, shift)
    use_cfg = true_cfg_scale > 1.0
    if use_cfg:
        assert negative is not None, "true CFG needs negative text inputs"
    tc = None
    if teacache_thresh is not None:
        assert not use_cfg, "TeaCache for HunyuanVideo assumes one forward per step (spec 7)"
        tc = TeaCache(teacache_thresh, num_steps)
    x = noise.to(torch.float32)
    B = x.shape[0]
    latents = []
    for i in range(num_steps):
        t = timesteps[i].expand(B).clone()
        attn = attention_for_step(i) if attention_for_step is not None else None
        v = model.forward(x, t, text, text_mask, pooled, guidance, attention=attn, teacache=tc).to(torch.float32)
        if use_cfg:
            vu = model.forward(x, t, negative["text"], negative["text_mask"], negative["pooled"], guidance,
                               attention=attn).to(torch.float32)
            v = vu + true_cfg_scale * (v - vu)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        latents.append(x.clone())
    res = SampleResult(latents=latents, sigmas=sigmas, timesteps=timesteps)
    if tc is not None:
        res.decisions, res.rels, res.accs = tc.decisions, tc.rels, tc.accs
    return res
