"""Shared pieces of the demo-model scripts: the model sizes (real and toy), trainable wrappers around the PyTorch
references in tools/reference (the very definitions the C++ code is checked against), attention backends for
training (SDPA / FlexAttention on a GPU, an explicit masked softmax on a CPU), sharded checkpoints, time budgets.

Runs on Debian's torch 1.13 (CPU, this machine) and torch 2.x (the GPU machine)."""

import json
import math
import os
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
sys.path.insert(0, HERE)

import hunyuan_dit as hd  # noqa: E402
import hunyuan_vae as hv  # noqa: E402
import safetensors_io as sio  # noqa: E402
import text_encoders as te  # noqa: E402

SHARD_BYTES = 15 * 1024 * 1024  # a device call returns files of at most 16 MiB


# ---------------------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """Everything that fixes shapes. Written to <run>/spec.json by the first stage; later stages read it."""

    toy: bool = False
    # video (training clips at the native size; the DiT also trains at `low_*` first)
    frames: int = 33
    height: int = 256
    width: int = 256
    low_frames: int = 17
    low_height: int = 128
    low_width: int = 128
    # text
    llama: dict = field(default_factory=lambda: dict(hidden_size=128, intermediate_size=320, num_hidden_layers=4,
                                                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                                     rope_theta=500000.0, max_position_embeddings=128))
    clip: dict = field(default_factory=lambda: dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                                    num_attention_heads=4, max_position_embeddings=77))
    skip_layers: int = 2
    # VAE (the released decoder layout with small channels). One GroupNorm group: the decoder's last GroupNorm
    # (8 channels) normalizes over the whole clip, so on a flat background each group's output keeps only
    # (channels per group - 2) continuous values; with 4 groups of 2 channels that is none, and the colour of a
    # flat area could take only 2^4 values (a fixed batch of 8 flat colours fits to 15.6 dB with 4 groups, 28 dB
    # and rising with 1 group, in 150 steps). The released model has 4 channels per group at 128 channels.
    vae: dict = field(default_factory=lambda: dict(latent_channels=16, block_out_channels=[8, 16, 32, 64],
                                                   layers_per_block=1, norm_num_groups=1))
    # DiT: head_dim 64 (the CUDA STA kernel takes 64 or 128), dual + single blocks, 3-D RoPE
    dit: dict = field(default_factory=lambda: dict(in_channels=16, out_channels=16, num_attention_heads=2,
                                                   attention_head_dim=64, num_layers=4, num_single_layers=6,
                                                   num_refiner_layers=1, rope_axes_dim=[16, 24, 24],
                                                   guidance_embeds=True))
    # STA: tile in latent tokens (a multiple of 64 tokens for the CUDA kernel) and the fixed window
    tile: List[int] = field(default_factory=lambda: [2, 4, 8])
    window: List[int] = field(default_factory=lambda: [3, 3, 2])
    flow_shift: float = 5.0

    @staticmethod
    def toy_spec() -> "Spec":
        return Spec(toy=True, frames=9, height=32, width=32, low_frames=5, low_height=32, low_width=32,
                    llama=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                               num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=64),
                    clip=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              max_position_embeddings=77),
                    vae=dict(latent_channels=4, block_out_channels=[4, 4, 8, 8], layers_per_block=1, norm_num_groups=1),
                    dit=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                             num_single_layers=1, num_refiner_layers=1, rope_axes_dim=[2, 2, 4], guidance_embeds=True),
                    tile=[1, 1, 1], window=[3, 1, 1])

    def save(self, run: str):
        os.makedirs(run, exist_ok=True)
        with open(os.path.join(run, "spec.json"), "w") as f:
            json.dump(asdict(self), f, indent=1)

    @staticmethod
    def load(run: str) -> "Spec":
        with open(os.path.join(run, "spec.json")) as f:
            return Spec(**json.load(f))

    def llama_config(self, vocab_size: int) -> te.LlamaConfig:
        return te.LlamaConfig(vocab_size=vocab_size, **self.llama)

    def clip_config(self, vocab_size: int, eos_id: int) -> te.ClipTextConfig:
        return te.ClipTextConfig(vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=eos_id - 1,
                                 pad_token_id=eos_id, **self.clip)

    def vae_config(self, scaling_factor: float = 1.0) -> hv.HunyuanVideoVAEConfig:
        return hv.HunyuanVideoVAEConfig(scaling_factor=scaling_factor, **self.vae)

    def dit_config(self) -> hd.HunyuanVideoConfig:
        return hd.HunyuanVideoConfig(text_embed_dim=self.llama["hidden_size"], pooled_projection_dim=self.clip["hidden_size"],
                                     **self.dit)


def get_or_make_spec(run: str, toy: bool) -> Spec:
    if os.path.exists(os.path.join(run, "spec.json")):
        spec = Spec.load(run)
        assert spec.toy == toy, f"{run}/spec.json has toy={spec.toy}, the command asked toy={toy}"
        return spec
    spec = Spec.toy_spec() if toy else Spec()
    spec.save(run)
    return spec


# ---------------------------------------------------------------------------------------------------------
# Devices, logging, budgets
# ---------------------------------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, nothing on the CPU."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class Budget:
    """Stops a loop at `minutes` minus a reserve for saving; None = no limit."""

    def __init__(self, minutes: Optional[float], reserve_s: float = 20.0):
        self.t0 = time.time()
        self.limit = None if minutes is None else minutes * 60.0 - reserve_s

    def elapsed(self) -> float:
        return time.time() - self.t0

    def over(self) -> bool:
        return self.limit is not None and self.elapsed() > self.limit


class Log:
    def __init__(self, path: Optional[str]):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)

    def __call__(self, **kw):
        line = json.dumps(kw, default=float)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors shards of at most 15 MiB (+ state.json)
# ---------------------------------------------------------------------------------------------------------


def save_tensors(folder: str, prefix: str, tensors: "OrderedDict[str, torch.Tensor]", meta: Optional[dict] = None):
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):
        if old.startswith(prefix + "-") and old.endswith(".safetensors"):
            os.remove(os.path.join(folder, old))
    shards, cur, size = [], OrderedDict(), 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = OrderedDict(), 0
        cur[k] = v.detach().cpu().contiguous()
        size += n
    shards.append(cur)
    for i, s in enumerate(shards):
        sio.save_file(s, os.path.join(folder, f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"),
                      {"meta": json.dumps(meta or {})})


def load_tensors(folder: str, prefix: str) -> Tuple["OrderedDict[str, torch.Tensor]", dict]:
    files = sorted(f for f in os.listdir(folder) if f.startswith(prefix + "-") and f.endswith(".safetensors"))
    assert files, f"no {prefix}-*.safetensors in {folder}"
    out, meta = OrderedDict(), {}
    for f in files:
        t, m = sio.load_file(os.path.join(folder, f))
        out.update(t)
        meta = json.loads(m.get("meta", "{}"))
    return out, meta


def module_state(params: Dict[str, nn.Parameter]) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().float().cpu()) for k, v in params.items())


def optimizer_state(opt: torch.optim.Optimizer, names: Sequence[str], params: Sequence[nn.Parameter]):
    """Adam moments in bf16 (half the bytes; a resumed run re-warms for a few steps)."""
    out = OrderedDict()
    step = 0
    for n, p in zip(names, params):
        st = opt.state.get(p, {})
        if "exp_avg" in st:
            out["opt." + n + ".m"] = st["exp_avg"].detach().to(torch.bfloat16).cpu()
            out["opt." + n + ".v"] = st["exp_avg_sq"].detach().to(torch.bfloat16).cpu()
            step = int(st["step"]) if not torch.is_tensor(st["step"]) else int(st["step"].item())
    return out, step


def restore_optimizer(opt: torch.optim.Optimizer, names, params, tensors, step: int):
    for n, p in zip(names, params):
        if "opt." + n + ".m" in tensors:
            st = opt.state[p]
            st["exp_avg"] = tensors["opt." + n + ".m"].to(p.device, torch.float32)
            st["exp_avg_sq"] = tensors["opt." + n + ".v"].to(p.device, torch.float32)
            st["step"] = torch.tensor(float(step)) if torch.__version__ >= "1.12" else step


class ParamSet(nn.Module):
    """A flat, ordered set of named parameters (diffusers / HF names kept verbatim)."""

    def __init__(self, tensors: "OrderedDict[str, torch.Tensor]"):
        super().__init__()
        self.names = list(tensors)
        self.plist = nn.ParameterList([nn.Parameter(t.detach().clone().float()) for t in tensors.values()])

    def dict(self) -> Dict[str, torch.Tensor]:
        return OrderedDict(zip(self.names, self.plist))

    def load(self, tensors: Dict[str, torch.Tensor], strict: bool = True):
        for n, p in zip(self.names, self.plist):
            if n in tensors:
                p.data.copy_(tensors[n].to(p.device, torch.float32))
            elif strict:
                raise KeyError(f"missing {n}")


# ---------------------------------------------------------------------------------------------------------
# Initialisation for training
# ---------------------------------------------------------------------------------------------------------


def _init_tensor(name: str, shape, g: torch.Generator, zero_names=()) -> torch.Tensor:
    if any(z in name for z in zero_names):
        return torch.zeros(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= int(s)
    return torch.randn(shape, generator=g) * math.sqrt(1.0 / fan_in)


def dit_init(cfg: hd.HunyuanVideoConfig, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """adaLN-Zero: modulation linears (gates, shifts, scales) and the output projection start at zero, so every
    block starts as the identity; the other Linears N(0, 1/fan_in), biases 0, norm weights 1."""
    g = torch.Generator().manual_seed(seed)
    zero = ("norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear", "proj_out.weight")
    out = OrderedDict()
    for name, shape in hd.param_shapes(cfg).items():
        if name.startswith("single_transformer_blocks") and name.endswith("proj_out.weight"):
            out[name] = _init_tensor(name, shape, g)
        elif name == "proj_out.weight" or any(z in name for z in zero[:4]):
            out[name] = torch.zeros(shape)
        else:
            out[name] = _init_tensor(name, shape, g)
    return out


def text_init(shapes, seed: int) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for name, shape in shapes.items():
        if "embed" in name or "embedding" in name:
            out[name] = torch.randn(shape, generator=g) * (0.02 if "position" in name else 1.0)
        else:
            out[name] = _init_tensor(name, shape, g)
    return out


# ---------------------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------------------


class TextEncoders(nn.Module):
    """Llama (HF LlamaModel names with the "model." prefix) and the CLIP text tower, over the references."""

    def __init__(self, llama_cfg: te.LlamaConfig, clip_cfg: te.ClipTextConfig, seed: int = 0):
        super().__init__()
        self.llama_cfg, self.clip_cfg = llama_cfg, clip_cfg
        self.llama = ParamSet(text_init(te.llama_param_shapes(llama_cfg), seed))
        self.clip = ParamSet(text_init(te.clip_param_shapes(clip_cfg), seed + 1))

    def llama_states(self, ids: torch.Tensor, valid: Sequence[int]):
        return te.llama_hidden_states(self.llama_cfg, self.llama.dict(), ids, valid)["hidden_states"]

    def clip_pooled(self, ids: torch.Tensor) -> torch.Tensor:
        return te.clip_forward(self.clip_cfg, self.clip.dict(), ids)["pooler_output"]


def encode_prompts(enc: TextEncoders, tok, prompts: Sequence[str], skip_layers: int, device) -> dict:
    """What model/text/prompt_encoder.cc hands the DiT: text states [B, max_length, D] (hidden_states[-(skip+1)],
    cropped), text mask [B, max_length] (valid = prompt tokens + <|eot_id|>), CLIP pooled [B, Dc]."""
    lp = [tok.encode_llm(p) for p in prompts]
    cp = [tok.encode_clip(p) for p in prompts]
    ids = torch.tensor([p.ids for p in lp], device=device)
    valid = [p.length for p in lp]
    states = enc.llama_states(ids, valid)[enc.llama_cfg.num_hidden_layers - skip_layers]
    text = states[:, tok.crop_start: tok.crop_start + tok.max_length]
    lens = [max(0, v - tok.crop_start) for v in valid]
    mask = torch.tensor([[1.0 if i < n else 0.0 for i in range(tok.max_length)] for n in lens], device=device)
    pooled = enc.clip_pooled(torch.tensor([p.ids for p in cp], device=device))
    return {"text": text, "text_mask": mask, "pooled": pooled, "text_len": lens,
            "llm_ids": ids, "clip_ids": torch.tensor([p.ids for p in cp])}


# ---------------------------------------------------------------------------------------------------------
# VAE: the reference decoder + a causal encoder for training
# ---------------------------------------------------------------------------------------------------------


def encoder_param_shapes(cfg: hv.HunyuanVideoVAEConfig) -> "OrderedDict[str, Tuple[int, ...]]":
    """Our encoder (not exported; the C++ side only decodes): the decoder's mirror. conv_in, per down block
    layers_per_block resnets and a strided causal conv where the decoder upsamples, mid resnets, GN, conv_out to
    2 x latent channels (mean, log-variance)."""
    sd = OrderedDict()
    ch = cfg.block_out_channels
    hv._conv(sd, "encoder.conv_in.conv", ch[0], cfg.in_channels, 3)
    prev = ch[0]
    for i, c in enumerate(ch):
        for j in range(cfg.layers_per_block):
            hv._resnet(sd, f"encoder.down_blocks.{i}.resnets.{j}", prev if j == 0 else c, c)
        prev = c
        if encoder_downsample(cfg, i) is not None:
            hv._conv(sd, f"encoder.down_blocks.{i}.downsamplers.0.conv.conv", c, c, 3)
    hv._resnet(sd, "encoder.mid_block.resnets.0", prev, prev)
    hv._resnet(sd, "encoder.mid_block.resnets.1", prev, prev)
    hv._norm(sd, "encoder.conv_norm_out", prev)
    hv._conv(sd, "encoder.conv_out.conv", 2 * cfg.latent_channels, prev, 3)
    return sd


def encoder_downsample(cfg, i: int):
    n = len(cfg.block_out_channels)
    S = int(round(math.log2(cfg.spatial_compression_ratio)))
    Tn = int(round(math.log2(cfg.temporal_compression_ratio)))
    sp, tm = i < S, (n - 1 - Tn) <= i < (n - 1)
    if not (sp or tm):
        return None
    return (2 if tm else 1, 2 if sp else 1, 2 if sp else 1)


class TrainRun(hv.DecodeRun):
    """The reference decode state with fused ops for training and whole-clip use (no chunk caches, no recorded
    GroupNorm statistics): F.group_norm (one kernel, fp32 under autocast) in place of the reference's explicit
    mean / variance passes, and one replicate pad (2 frames in front in time, 1 on each side in space) in place
    of the reference's concatenation then spatial pad. Same maths: biased variance, the same eps, replicate
    padding is separable; the output matches the reference to rounding (tools/demo/smoke_test.py checks it)."""

    def gn(self, p, name, x, groups):
        return torch.nn.functional.group_norm(x, groups, p[name + ".weight"], p[name + ".bias"], eps=hv.GN_EPS)

    def conv(self, p, name, x):
        w = p[name + ".weight"]
        if w.shape[2] == 1:
            return torch.nn.functional.conv3d(x, w, p[name + ".bias"])
        assert w.shape[2] == 3 and self.first_chunk and not self.conv_cache, "TrainRun decodes whole clips only"
        xp = torch.nn.functional.pad(x, (1, 1, 1, 1, 2, 0), mode="replicate")
        return torch.nn.functional.conv3d(xp, w, p[name + ".bias"])


class VAE(nn.Module):
    def __init__(self, cfg: hv.HunyuanVideoVAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        dec = OrderedDict((n, _init_tensor(n, s, g)) for n, s in hv.decoder_param_shapes(cfg).items())
        enc = OrderedDict((n, _init_tensor(n, s, g)) for n, s in encoder_param_shapes(cfg).items())
        self.dec = ParamSet(dec)
        self.enc = ParamSet(enc)

    def encode(self, video: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """video [B, 3, F, H, W] in [-1, 1] -> (mean, logvar) of the raw latent [B, L, T, H/8, W/8]."""
        p = self.enc.dict()
        run = TrainRun(self.cfg, "self")
        g = self.cfg.norm_num_groups
        x = run.conv(p, "encoder.conv_in.conv", video)
        for i, c in enumerate(self.cfg.block_out_channels):
            for j in range(self.cfg.layers_per_block):
                x = hv._resnet_forward(run, p, f"encoder.down_blocks.{i}.resnets.{j}", x, g)
            f = encoder_downsample(self.cfg, i)
            if f is not None:
                name = f"encoder.down_blocks.{i}.downsamplers.0.conv.conv"
                xt = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)  # causal: two copies of frame 0 in front
                xp = torch.nn.functional.pad(xt, (1, 1, 1, 1, 0, 0), mode="replicate")
                x = torch.nn.functional.conv3d(xp, p[name + ".weight"], p[name + ".bias"], stride=f)
        x = hv._resnet_forward(run, p, "encoder.mid_block.resnets.0", x, g)
        x = hv._resnet_forward(run, p, "encoder.mid_block.resnets.1", x, g)
        x = torch.nn.functional.silu(run.gn(p, "encoder.conv_norm_out", x, g))
        x = run.conv(p, "encoder.conv_out.conv", x)
        mean, logvar = x.chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 5.0)

    def decode_raw(self, z_raw: torch.Tensor) -> torch.Tensor:
        """Raw latent -> video in about [-1, 1] through the reference decoder (scaling factor 1 here)."""
        cfg1 = hv.HunyuanVideoVAEConfig(**{**asdict(self.cfg), "scaling_factor": 1.0})
        return hv._decoder_forward(TrainRun(cfg1, "self"), self.dec.dict(), z_raw)


# ---------------------------------------------------------------------------------------------------------
# DiT and its attention backends
# ---------------------------------------------------------------------------------------------------------


def _rope_complex(x, cos, sin):
    """hd.apply_rope as one complex multiply (interleaved pairs = real, imaginary): 3 passes over x instead of 8."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    out = torch.view_as_real(xc * torch.complex(cos.float(), sin.float()))
    return out.reshape(x.shape).to(x.dtype)


def _rms(x, weight, eps=hd.RMS_EPS):
    """hd.rms_norm in fp32 (as the reference computes it after its fp32 bias add), one kernel where torch has it."""
    x, weight = x.float(), weight.float()
    if hasattr(F, "rms_norm"):  # torch >= 2.4
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return hd.rms_norm(x, weight, eps)


class FusedTransformer(hd.HunyuanVideoTransformer):
    """The reference DiT forward (spec 2, same order and math) with fused kernels for training: F.linear (bias
    in the GEMM epilogue, a bf16 result under autocast instead of an fp32 one), F.layer_norm + addcmul for
    adaLN, addcmul for the gated residuals, F.rms_norm where torch has it and RoPE as a complex multiply.
    The demo DiT (hidden size 128) is bound by these elementwise passes, not by its GEMMs or attention
    (docs/demo-model.md). fp32 on the CPU: within 1e-5 of the reference (smoke_test.py)."""

    def linear(self, x, name, act=None):
        y = F.linear(x, self.p[name + ".weight"], self.p[name + ".bias"])
        if act == "gelu_tanh":
            y = F.gelu(y, approximate="tanh")
        return self.rnd(y)

    def ln_modulate(self, x, shift, scale):
        y = F.layer_norm(x, (x.shape[-1],), eps=hd.LN_EPS)
        return self.rnd(torch.addcmul(shift[:, None, :].to(y.dtype), y, (1.0 + scale[:, None, :]).to(y.dtype)))

    def gated_add(self, x, gate, y):
        # The residual streams stay fp32 as in the reference (the text stream starts as a bf16 F.linear output
        # under autocast; it is 32 tokens, so the cast is cheap).
        return self.rnd(torch.addcmul(x.float(), gate[:, None, :], y))

    def _qk_prepare(self, q, k, q_norm, k_norm, cos=None, sin=None, n_img=None):
        q, k = self.rnd(_rms(q, self.p[q_norm])), self.rnd(_rms(k, self.p[k_norm]))
        if cos is not None:
            n = q.shape[2] if n_img is None else n_img
            if n == q.shape[2]:
                return self.rnd(_rope_complex(q, cos, sin)), self.rnd(_rope_complex(k, cos, sin))
            q = torch.cat([self.rnd(_rope_complex(q[:, :, :n], cos, sin)), q[:, :, n:]], dim=2)
            k = torch.cat([self.rnd(_rope_complex(k[:, :, :n], cos, sin)), k[:, :, n:]], dim=2)
        return q, k


class DiT(nn.Module):
    """The trainable demo DiT: weights in a ParamSet, forward through the reference transformer (or, with
    fused=True, FusedTransformer: same math, fewer kernels; the training stages use it)."""

    def __init__(self, cfg: hd.HunyuanVideoConfig, seed: int = 0, fused: bool = False):
        super().__init__()
        self.cfg = cfg
        self.fused = fused
        self.w = ParamSet(dit_init(cfg, seed))

    def forward(self, x, timestep, text, text_mask, pooled, guidance, attention):
        cls = FusedTransformer if self.fused else hd.HunyuanVideoTransformer
        model = cls(self.cfg, self.w.dict())
        return model.forward(x, timestep, text, text_mask, pooled, guidance, attention=attention)


def _has_sdpa() -> bool:
    return hasattr(torch.nn.functional, "scaled_dot_product_attention")


def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        return True
    except Exception:
        return False


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


class Attention:
    """Attention for hunyuan_dit's forward (its `attention=` argument): `mask()` returns a callable, so the
    reference's masked_attention hands q, k, v [B, H, S, Dh] over to `attend`.

    mode "dense": every query sees the image tokens and the valid text tokens (spec 2.4).
    mode "sta":   sta.md sections 3-4 with one window per head (the same window in every layer: the fixed-window
                  recipe), tile in latent tokens, raster token order.
    impl: "flex" (FlexAttention, GPU, compiled; dense too: a per-sample key-length block mask), "sdpa" (torch 2
          SDPA with a boolean mask), "math" (explicit masked softmax; torch 1.13 CPU), "auto" = flex for STA on
          CUDA, sdpa where available, else math (tools/demo/bench_attn.py times dense sdpa against flex).
    record: keeps each layer's attention output (for the per-layer distillation of STA fine-tuning).
    """

    def __init__(self, mode: str = "dense", tile=(1, 1, 1), windows=None, impl: str = "auto", record: bool = False):
        assert mode in ("dense", "sta")
        self.mode, self.tile = mode, tuple(int(v) for v in tile)
        self.windows = windows  # list of per-head (wt, wh, ww)
        self.impl = impl
        self.record = record
        self.records: Dict[int, torch.Tensor] = {}
        self._struct = {}
        self._blockmask = {}

    def _impl(self, device) -> str:
        if self.impl != "auto":
            return self.impl
        if self.mode == "sta" and device.type == "cuda" and _has_flex():
            return "flex"
        return "sdpa" if _has_sdpa() else "math"

    def mask(self, layer: int, heads: int, canvas, text_slots: int, text_lens):
        return lambda q, k, v: self.attend(layer, q, k, v, tuple(int(c) for c in canvas), int(text_slots), list(text_lens))

    def _structure(self, canvas, L, heads, device):
        """[1, H, S, S] bool: STA image-image visibility, image->text and text->anything True (key validity added
        per batch)."""
        key = (canvas, L, heads, str(device))
        if key not in self._struct:
            n = canvas[0] * canvas[1] * canvas[2]
            S = n + L
            m = torch.ones(1, heads, S, S, dtype=torch.bool)
            if self.mode == "sta":
                for h in range(heads):
                    m[0, h, :n, :n] = hd.sta_image_mask(canvas, self.tile, self.windows[h])
            self._struct[key] = m.to(device)
        return self._struct[key]

    def attend(self, layer, q, k, v, canvas, L, text_lens):
        B, H, S, Dh = q.shape
        n = S - L
        impl = self._impl(q.device)
        if impl == "flex":
            try:
                out = self._flex(q, k, v, canvas, L, text_lens)
            except Exception as e:  # compile/lowering problems: fall back to SDPA with a boolean mask
                print(json.dumps({"warning": f"FlexAttention failed ({type(e).__name__}: {str(e)[:300]}); using sdpa"}),
                      flush=True)
                self.impl = "sdpa"
                return self.attend(layer, q, k, v, canvas, L, text_lens)
        else:
            kv = torch.arange(S, device=q.device)[None, :] < (n + torch.tensor(text_lens, device=q.device))[:, None]
            if self.mode == "dense":
                mask = kv[:, None, None, :]
            else:
                mask = self._structure(canvas, L, H, q.device) & kv[:, None, None, :]
            if impl == "sdpa":
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:
                scale = 1.0 / math.sqrt(Dh)
                s = torch.matmul(q, k.transpose(-1, -2)) * scale
                s = s.masked_fill(~mask, float("-inf"))
                out = torch.matmul(torch.softmax(s.float(), dim=-1).to(v.dtype), v)
        if self.record:
            self.records[layer] = out
        return out

    def _flex(self, q, k, v, canvas, L, text_lens):
        B, H, S, Dh = q.shape
        n = S - L
        dev = q.device
        key = (canvas, L, H, B, tuple(text_lens))
        if key not in self._blockmask:
            self._blockmask = {key: self._flex_mask(canvas, n, S, B, H, torch.tensor(text_lens, device=dev), dev)}
        return _compiled_flex()(q, k, v, block_mask=self._blockmask[key])

    def _flex_mask(self, canvas, n, S, B, H, tl, dev):
        """FlexAttention block mask over [n image tokens | text slots] for text lengths tl [B]."""
        from torch.nn.attention.flex_attention import create_block_mask

        if self.mode == "dense":
            # Every query sees the image keys and its sample's valid text keys (one mask for all heads).
            def dense_mod(b, h, qi, ki):
                return (ki < n) | ((ki - n) < tl[b])

            return create_block_mask(dense_mod, B, None, S, S, device=dev)
        T, Hh, W = canvas
        idx = torch.arange(n, device=dev)
        coords = [idx // (Hh * W) // self.tile[0], (idx // W) % Hh // self.tile[1], idx % W // self.tile[2]]
        grid = [(c + t - 1) // t for c, t in zip(canvas, self.tile)]
        r = torch.tensor([[int(w[d]) // 2 for d in range(3)] for w in self.windows], device=dev)  # [H, 3]
        g = torch.tensor(grid, device=dev)

        def mask_mod(b, h, qi, ki):
            qc = qi.clamp(max=n - 1)
            kc = ki.clamp(max=n - 1)
            vis = torch.ones_like(qi, dtype=torch.bool)
            for d in range(3):
                rd = r[h, d]
                c = torch.minimum(torch.maximum(coords[d][qc], rd), g[d] - 1 - rd)
                vis = vis & ((c - coords[d][kc]).abs() <= rd)
            img_k = ki < n
            img_q = qi < n
            text_ok = (ki - n) < tl[b]
            return torch.where(img_k, torch.where(img_q, vis, torch.ones_like(vis)), text_ok)

        return create_block_mask(mask_mod, B, H, S, S, device=dev)


def sta_windows(spec: Spec) -> List[Tuple[int, int, int]]:
    return [tuple(spec.window)] * spec.dit["num_attention_heads"]


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2, so peak^2 = 4)."""
    return 10.0 * math.log10(4.0 / max(float(mse), 1e-12))


def frames_psnr(a, b) -> float:
    """PSNR in dB of decoded frames [F, H, W, 3] in [0, 1] (peak 1) against reference frames."""
    mse = float(((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def frames_ssim(a, b) -> float:
    """Mean SSIM over frames and channels of frames [F, H, W, 3] in [0, 1], 8x8 box window."""
    x = torch.as_tensor(a).float().permute(0, 3, 1, 2)
    y = torch.as_tensor(b).float().permute(0, 3, 1, 2)
    k = 8
    mu_x, mu_y = F.avg_pool2d(x, k, 1), F.avg_pool2d(y, k, 1)
    sxx = F.avg_pool2d(x * x, k, 1) - mu_x ** 2
    syy = F.avg_pool2d(y * y, k, 1) - mu_y ** 2
    sxy = F.avg_pool2d(x * y, k, 1) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def video_psnr(rec: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of a reconstruction in about [-1, 1] (clamped) against its reference."""
    return psnr_from_mse(((rec.float().clamp(-1, 1) - ref.float()) ** 2).mean())


def sta_sparsity(canvas, tile, window) -> float:
    grid = hd.sta_grid(canvas, tile)
    kept = 1.0
    for d in range(3):
        kept *= min(2 * (int(window[d]) // 2) + 1, grid[d]) / grid[d]
    return 1.0 - kept


# ---------------------------------------------------------------------------------------------------------
# Flow matching (spec 6 schedule; training samples sigma with the same shift)
# ---------------------------------------------------------------------------------------------------------


def sample_sigmas(gen: torch.Generator, n: int, shift: float, device) -> torch.Tensor:
    u = torch.rand(n, generator=gen)
    u = torch.sigmoid(torch.randn(n, generator=gen)) * 0.8 + u * 0.2  # logit-normal, with a uniform floor
    s = shift * u / (1.0 + (shift - 1.0) * u)
    return s.to(device)


@torch.no_grad()
def sample_video_latents(dit: DiT, cond: dict, noise: torch.Tensor, steps: int, shift: float, guidance: float,
                         attention_for_step, device) -> torch.Tensor:
    """Euler flow-matching sampler (hunyuan_dit.sample's arithmetic) over batched conditions."""
    sigmas, timesteps = hd.flow_match_sigmas(steps, shift)
    x = noise.float()
    B = x.shape[0]
    g = torch.full((B,), float(guidance) * 1000.0, device=device)
    for i in range(steps):
        t = timesteps[i].expand(B).to(device)
        with autocast(device):
            v = dit(x, t, cond["text"], cond["text_mask"], cond["pooled"], g, attention_for_step(i)).float()
        x = x + (sigmas[i + 1] - sigmas[i]).item() * v
    return x


def set_threads():
    n = int(os.environ.get("STAVID_DEMO_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
