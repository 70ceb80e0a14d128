"""PyTorch references of HunyuanVideo's two text encoders, written from their architecture definitions (no
`transformers` package): the Llama decoder stack used as a hidden-state encoder (HF `LlamaModel`, no LM head)
and the CLIP text tower (HF `CLIPTextModel`). shared/spec/hunyuan-video.md section 5 gives the recipe that uses
them: Llama hidden_states[-3] (the output of decoder layer L-2, no final norm) and CLIP's pooler_output.

Scope: readable, dense, small-shape references that the C++/CUDA models (model/text/llama.cc, clip.cc) are
checked against (golden files written by make_text_goldens.py). Attention is a dense matmul with an explicit
boolean mask.

Semantics mirrored from transformers (eager attention path):
- Llama: x = embed_tokens[ids]; per layer x += o_proj(attn(rope(q), rope(k), v)) on input_layernorm(x), then
  x += down_proj(silu(gate_proj(h)) * up_proj(h)) on post_attention_layernorm(x). RMSNorm: x * rsqrt(mean(x^2) +
  eps) * weight, statistics in fp32. RoPE is rotate-half (NeoX): inv_freq[j] = 1 / theta^(2j / head_dim) in fp32,
  angle = position * inv_freq (fp32), cos/sin of cat(angle, angle); q' = q cos + rotate_half(q) sin with
  rotate_half(q) = cat(-q[half:], q[:half]). Positions are 0..L-1 (right padding does not shift them).
  Grouped-query attention: query head h reads key/value head h // (H / KV) (repeat_kv). Scale 1/sqrt(head_dim).
  hidden_states is the tuple (embeddings, after layer 1, ..., after layer L-1, norm(after layer L)): entry n < L
  is the state after n layers without the final norm, the last entry is normed (= last_hidden_state).
- Mask (both models): query i of item b sees key j iff j <= i (causal) and j < valid[b] (the attention mask,
  right padding). A padded query row (i >= valid) therefore sees exactly the valid keys; every row sees at
  least one key when valid >= 1. Without an attention mask valid = L (pure causal).
- CLIP: x = token_embedding[ids] + position_embedding[0..L-1]; per layer (pre-LN) x += out_proj(attn(ln1(x))),
  x += fc2(quick_gelu(fc1(ln2(x)))), quick_gelu(y) = y * sigmoid(1.702 y); q/k/v/out projections have biases;
  last_hidden_state = final_layer_norm(x). pooler_output = last_hidden_state[b, pos_b] with pos_b =
  argmax(ids[b]) (first maximum) when config eos_token_id == 2 (the legacy configs, openai/clip-vit-large-patch14
  among them: the vocabulary's last id is <|endoftext|>), else the first position holding eos_token_id (0 when
  there is none, as torch's argmax of an all-zero row). No text_projection.

Precision model: `dtype` is the compute dtype (float32; float64 measures the fp32 reference's own rounding).
`act_dtype=torch.bfloat16` emulates a bf16 model the way the project's kernels run: weights rounded to bf16,
every op computes in fp32 and rounds its output once (Linear, norm, SiLU, the SwiGLU product, each RoPE
multiply and the add, residual adds, the quick-GELU chain as one op); attention scores, mask and softmax stay
fp32 and the probabilities are rounded before P.V.
"""

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

# ---------------------------------------------------------------------------------------------------------
# Configurations (HF config.json field names)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LlamaConfig:
    """Defaults: the LLaVA-Llama-3-8B language model that HunyuanVideo uses (spec 5)."""

    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    vocab_size: int = 128320
    max_position_embeddings: int = 8192

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf_json(self) -> dict:
        d = asdict(self)
        d.update({"architectures": ["LlamaModel"], "model_type": "llama", "hidden_act": "silu",
                  "attention_bias": False, "mlp_bias": False, "rope_scaling": None, "tie_word_embeddings": False,
                  "torch_dtype": "float32", "bos_token_id": 128000, "eos_token_id": 128001,
                  "initializer_range": 0.02, "attention_dropout": 0.0, "pretraining_tp": 1, "use_cache": True})
        return d


@dataclass
class ClipTextConfig:
    """Defaults: openai/clip-vit-large-patch14's text tower (spec 5)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    eos_token_id: int = 2
    bos_token_id: int = 0
    pad_token_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf_json(self) -> dict:
        d = asdict(self)
        d.update({"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                  "projection_dim": self.hidden_size, "attention_dropout": 0.0, "dropout": 0.0,
                  "initializer_factor": 1.0, "initializer_range": 0.02, "torch_dtype": "float32"})
        return d


# ---------------------------------------------------------------------------------------------------------
# Weight names and shapes (HF safetensors keys)
# ---------------------------------------------------------------------------------------------------------


def llama_param_shapes(c: LlamaConfig, prefix: str = "model.") -> "OrderedDict[str, Tuple[int, ...]]":
    d, f, hd = c.hidden_size, c.intermediate_size, c.head_dim
    s = OrderedDict()
    s[prefix + "embed_tokens.weight"] = (c.vocab_size, d)
    for i in range(c.num_hidden_layers):
        p = f"{prefix}layers.{i}."
        s[p + "input_layernorm.weight"] = (d,)
        s[p + "self_attn.q_proj.weight"] = (c.num_attention_heads * hd, d)
        s[p + "self_attn.k_proj.weight"] = (c.num_key_value_heads * hd, d)
        s[p + "self_attn.v_proj.weight"] = (c.num_key_value_heads * hd, d)
        s[p + "self_attn.o_proj.weight"] = (d, c.num_attention_heads * hd)
        s[p + "post_attention_layernorm.weight"] = (d,)
        s[p + "mlp.gate_proj.weight"] = (f, d)
        s[p + "mlp.up_proj.weight"] = (f, d)
        s[p + "mlp.down_proj.weight"] = (d, f)
    s[prefix + "norm.weight"] = (d,)
    return s


def clip_param_shapes(c: ClipTextConfig) -> "OrderedDict[str, Tuple[int, ...]]":
    d, f = c.hidden_size, c.intermediate_size
    s = OrderedDict()
    s["text_model.embeddings.token_embedding.weight"] = (c.vocab_size, d)
    s["text_model.embeddings.position_embedding.weight"] = (c.max_position_embeddings, d)
    for i in range(c.num_hidden_layers):
        p = f"text_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"self_attn.{n}.weight"] = (d, d)
            s[p + f"self_attn.{n}.bias"] = (d,)
        s[p + "layer_norm1.weight"] = (d,)
        s[p + "layer_norm1.bias"] = (d,)
        s[p + "mlp.fc1.weight"] = (f, d)
        s[p + "mlp.fc1.bias"] = (f,)
        s[p + "mlp.fc2.weight"] = (d, f)
        s[p + "mlp.fc2.bias"] = (d,)
        s[p + "layer_norm2.weight"] = (d,)
        s[p + "layer_norm2.bias"] = (d,)
    s["text_model.final_layer_norm.weight"] = (d,)
    s["text_model.final_layer_norm.bias"] = (d,)
    return s


def param_count(shapes) -> int:
    return sum(math.prod(s) for s in shapes.values())


def _is_norm(name: str) -> bool:
    return "norm" in name


def init_random(shapes, seed: int, embed_std: float = 1.0) -> "OrderedDict[str, torch.Tensor]":
    """Seeded weights whose values are exactly representable in bf16 (so a bf16 model loads the same numbers):
    matrices N(0, 1/fan_in), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2), norm biases N(0, 0.05^2),
    embedding tables N(0, embed_std^2) (position tables a fifth of that)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for name, shape in shapes.items():
        if "embedding" in name or "embed_tokens" in name:
            std = embed_std * (0.2 if "position" in name else 1.0)
            t = torch.randn(shape, generator=g) * std
        elif _is_norm(name) and name.endswith(".weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.05 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        out[name] = t.to(torch.bfloat16).to(torch.float32)
    return out


# ---------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------


class _Ops:
    """Computes in `dtype`, rounds each op's output through `act_dtype` when one is given."""

    def __init__(self, dtype=torch.float32, act_dtype=None):
        self.dtype = dtype
        self.act_dtype = act_dtype

    def r(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_dtype is None:
            return x
        return x.to(self.act_dtype).to(self.dtype)

    def w(self, t: torch.Tensor) -> torch.Tensor:
        return self.r(t.to(self.dtype))

    def linear(self, x, w, b=None):
        y = x @ w.t()
        if b is not None:
            y = y + b
        return self.r(y)


def attention_mask(seq_len: int, valid: Sequence[int]) -> torch.Tensor:
    """[B, L, L] bool: query i of item b sees key j iff j <= i and j < valid[b]."""
    i = torch.arange(seq_len).view(seq_len, 1)
    j = torch.arange(seq_len).view(1, seq_len)
    causal = j <= i
    return torch.stack([causal & (j < int(v)) for v in valid])


def attention(ops: _Ops, q, k, v, mask, heads: int, kv_heads: int):
    """q [B, L, H*hd], k/v [B, L, KV*hd], mask [B, L, L] bool -> [B, L, H*hd]. Scores and softmax in the
    compute dtype (fp32 in the bf16 emulation), probabilities rounded before P.V."""
    b, l, _ = q.shape
    hd = q.shape[-1] // heads
    qh = q.view(b, l, heads, hd).transpose(1, 2)  # [B, H, L, hd]
    kh = k.view(b, l, kv_heads, hd).transpose(1, 2)
    vh = v.view(b, l, kv_heads, hd).transpose(1, 2)
    rep = heads // kv_heads
    kh = kh.repeat_interleave(rep, dim=1)  # repeat_kv: head h reads kv head h // rep
    vh = vh.repeat_interleave(rep, dim=1)
    s = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)  # [B, H, L, L]
    s = s.masked_fill(~mask[:, None], float("-inf"))
    p = ops.r(torch.softmax(s, dim=-1))
    o = ops.r(p @ vh)  # [B, H, L, hd]
    return o.transpose(1, 2).reshape(b, l, heads * hd)


# ---------------------------------------------------------------------------------------------------------
# Llama
# ---------------------------------------------------------------------------------------------------------


def rope_tables(c: LlamaConfig, seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, head_dim] in fp32, HF LlamaRotaryEmbedding: inv_freq and the angles in fp32."""
    hd = c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))  # [hd/2] fp32
    pos = torch.arange(seq_len, dtype=torch.float32)
    ang = pos[:, None] * inv_freq[None, :]  # [L, hd/2] fp32
    emb = torch.cat([ang, ang], dim=-1)
    return emb.double().cos().float(), emb.double().sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rms_norm(ops: _Ops, x, w, eps):
    x32 = x.to(torch.float64 if ops.dtype == torch.float64 else torch.float32)
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return ops.r((y * w).to(ops.dtype))


def llama_hidden_states(c: LlamaConfig, params, ids: torch.Tensor, valid: Sequence[int], dtype=torch.float32,
                        act_dtype=None, prefix: str = "model.") -> Dict[str, object]:
    """HF LlamaModel(input_ids, attention_mask, output_hidden_states=True): "hidden_states" is the list of
    num_hidden_layers + 1 tensors [B, L, D] (entry n < num_layers is the state after n layers, no final norm;
    the last entry is norm(after all layers) = last_hidden_state); "after_all_layers" is the un-normed state
    after the last layer."""
    ops = _Ops(dtype, act_dtype)
    p = {k: ops.w(v) for k, v in params.items()}
    b, l = ids.shape
    h, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    mask = attention_mask(l, valid).to(ids.device)
    cos, sin = rope_tables(c, l)
    cos, sin = cos.to(ids.device, dtype)[None, :, None, :], sin.to(ids.device, dtype)[None, :, None, :]  # [1, L, 1, hd]

    def rope(x, heads):  # x [B, L, heads*hd]; each multiply and the add round once
        xh = x.view(b, l, heads, hd)
        return ops.r(ops.r(xh * cos) + ops.r(rotate_half(xh) * sin)).reshape(b, l, heads * hd)

    x = p[prefix + "embed_tokens.weight"][ids.long()]  # [B, L, D]
    states = [x]
    for i in range(c.num_hidden_layers):
        q_ = f"{prefix}layers.{i}."
        t = rms_norm(ops, x, p[q_ + "input_layernorm.weight"], c.rms_norm_eps)
        q = rope(ops.linear(t, p[q_ + "self_attn.q_proj.weight"]), h)
        k = rope(ops.linear(t, p[q_ + "self_attn.k_proj.weight"]), kv)
        v = ops.linear(t, p[q_ + "self_attn.v_proj.weight"])
        o = attention(ops, q, k, v, mask, h, kv)
        x = ops.r(x + ops.linear(o, p[q_ + "self_attn.o_proj.weight"]))
        t = rms_norm(ops, x, p[q_ + "post_attention_layernorm.weight"], c.rms_norm_eps)
        gate = ops.r(torch.nn.functional.silu(ops.linear(t, p[q_ + "mlp.gate_proj.weight"])))
        m = ops.r(gate * ops.linear(t, p[q_ + "mlp.up_proj.weight"]))
        x = ops.r(x + ops.linear(m, p[q_ + "mlp.down_proj.weight"]))
        states.append(x)
    states[-1] = rms_norm(ops, x, p[prefix + "norm.weight"], c.rms_norm_eps)
    return {"hidden_states": states, "after_all_layers": x}


# ---------------------------------------------------------------------------------------------------------
# CLIP text tower
# ---------------------------------------------------------------------------------------------------------


def layer_norm(ops: _Ops, x, w, b, eps):
    return ops.r(torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps))


def clip_pool_positions(c: ClipTextConfig, ids: torch.Tensor) -> torch.Tensor:
    """HF CLIPTextTransformer's pooling index per item."""
    if c.eos_token_id == 2:
        # Legacy configs: the EOS token has the highest id in the vocabulary; torch.argmax returns the first
        # maximum (padding with <|endoftext|> repeats it; the first one is the real EOS).
        return torch.stack([torch.nonzero(row == row.max())[0, 0] for row in ids])
    return (ids == c.eos_token_id).int().argmax(dim=-1)


def clip_forward(c: ClipTextConfig, params, ids: torch.Tensor, valid: Optional[Sequence[int]] = None,
                 dtype=torch.float32, act_dtype=None) -> Dict[str, torch.Tensor]:
    """HF CLIPTextModel(input_ids, attention_mask): last_hidden_state [B, L, D], pooler_output [B, D] and the
    state after each layer. valid None = no attention mask (diffusers' call)."""
    assert c.hidden_act == "quick_gelu"
    ops = _Ops(dtype, act_dtype)
    p = {k: ops.w(v) for k, v in params.items()}
    b, l = ids.shape
    assert l <= c.max_position_embeddings
    mask = attention_mask(l, valid if valid is not None else [l] * b).to(ids.device)
    x = ops.r(p["text_model.embeddings.token_embedding.weight"][ids.long()] +
              p["text_model.embeddings.position_embedding.weight"][:l][None])
    layers = []
    for i in range(c.num_hidden_layers):
        q_ = f"text_model.encoder.layers.{i}."
        t = layer_norm(ops, x, p[q_ + "layer_norm1.weight"], p[q_ + "layer_norm1.bias"], c.layer_norm_eps)
        q = ops.linear(t, p[q_ + "self_attn.q_proj.weight"], p[q_ + "self_attn.q_proj.bias"])
        k = ops.linear(t, p[q_ + "self_attn.k_proj.weight"], p[q_ + "self_attn.k_proj.bias"])
        v = ops.linear(t, p[q_ + "self_attn.v_proj.weight"], p[q_ + "self_attn.v_proj.bias"])
        o = attention(ops, q, k, v, mask, c.num_attention_heads, c.num_attention_heads)
        x = ops.r(x + ops.linear(o, p[q_ + "self_attn.out_proj.weight"], p[q_ + "self_attn.out_proj.bias"]))
        t = layer_norm(ops, x, p[q_ + "layer_norm2.weight"], p[q_ + "layer_norm2.bias"], c.layer_norm_eps)
        y = t @ p[q_ + "mlp.fc1.weight"].t() + p[q_ + "mlp.fc1.bias"]
        g = ops.r(y * torch.sigmoid(1.702 * y))  # quick_gelu (fc1 + activation: one rounding in the emulation)
        x = ops.r(x + ops.linear(g, p[q_ + "mlp.fc2.weight"], p[q_ + "mlp.fc2.bias"]))
        layers.append(x)
    last = layer_norm(ops, x, p["text_model.final_layer_norm.weight"], p["text_model.final_layer_norm.bias"],
                      c.layer_norm_eps)
    pos = clip_pool_positions(c, ids)
    pooled = last[torch.arange(b, device=last.device), pos.to(last.device)]
    return {"last_hidden_state": last, "pooler_output": pooled, "layers": layers, "pool_positions": pos}


def config_json(c) -> str:
    return json.dumps(c.to_hf_json(), indent=2, sort_keys=True) + "\n"
