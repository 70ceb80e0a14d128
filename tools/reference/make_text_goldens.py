#!/usr/bin/python3
"""Writes the text-encoder golden files under tests/data/text/ from the PyTorch references (text_encoders.py).

Run:  /usr/bin/python3 tools/reference/make_text_goldens.py [--out DIR]

Deterministic (fixed seeds, CPU, one thread, fp32). Runs self-checks first, then writes:
  llama/config.json, llama/model.safetensors   tiny random LlamaModel (HF config and key names, F32 values that
                                               are exact in bf16)
  clip/config.json,  clip/model.safetensors    tiny random CLIPTextModel (likewise)
  io.safetensors                               inputs (in __metadata__) and reference outputs, F32
tests/data/text/README.md lists the tensors.
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_encoders as te  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

LLAMA = te.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0, vocab_size=300,
                       max_position_embeddings=128)
# eos_token_id 2 = the legacy rule of the released config (pool at argmax(ids)); the vocabulary's last id (299)
# plays <|endoftext|> and 298 <|startoftext|>, as 49407 / 49406 do in CLIP-L's vocabulary.
CLIP = te.ClipTextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5, eos_token_id=2)
CLIP_BOS, CLIP_EOS = 298, 299

LLAMA_SEED, CLIP_SEED, INPUT_SEED = 601, 602, 603
LLAMA_LEN, LLAMA_VALID = 24, [24, 11]  # item 0 fills the sequence, item 1 is right-padded
LLAMA_PAD = 0
CLIP_LEN, CLIP_PROMPT_TOKENS = 77, [10, 30]  # + BOS + EOS, padded with EOS (CLIP-L's tokenizer pads with it)


def nmse(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return float(((a - ref) ** 2).sum() / (ref ** 2).sum())


def make_inputs():
    g = torch.Generator().manual_seed(INPUT_SEED)
    llama_ids = torch.full((2, LLAMA_LEN), LLAMA_PAD, dtype=torch.int64)
    for b, v in enumerate(LLAMA_VALID):
        llama_ids[b, :v] = torch.randint(0, LLAMA.vocab_size, (v,), generator=g)
    clip_ids = torch.full((2, CLIP_LEN), CLIP_EOS, dtype=torch.int64)
    clip_valid = []
    for b, n in enumerate(CLIP_PROMPT_TOKENS):
        clip_ids[b, 0] = CLIP_BOS
        clip_ids[b, 1:1 + n] = torch.randint(0, CLIP_BOS, (n,), generator=g)
        clip_ids[b, 1 + n] = CLIP_EOS
        clip_valid.append(n + 2)
    return llama_ids, clip_ids, clip_valid


# ---------------------------------------------------------------------------------------------------------
# Self-checks (run before writing anything)
# ---------------------------------------------------------------------------------------------------------


def self_checks(llama_params, clip_params, llama_ids, clip_ids, clip_valid) -> dict:
    report = {}
    # Parameter counts of the released encoders: LLaVA-Llama-3-8B's LlamaModel (no lm_head; Llama-3-8B's
    # 8,030,261,248 minus its 525,336,576-parameter head, plus 64 extra vocabulary rows of 4096) and CLIP-L's
    # text tower (123,060,480, the published figure).
    assert te.param_count(te.llama_param_shapes(te.LlamaConfig())) == 7_505_186_816
    assert 8_030_261_248 - 128256 * 4096 + 64 * 4096 == 7_505_186_816
    assert te.param_count(te.clip_param_shapes(te.ClipTextConfig())) == 123_060_480
    assert len(te.llama_param_shapes(te.LlamaConfig())) == 1 + 9 * 32 + 1
    assert len(te.clip_param_shapes(te.ClipTextConfig())) == 2 + 16 * 12 + 2

    g = torch.Generator().manual_seed(7)
    # RoPE: rotate-half == rotating the pairs (j, j + half) as complex numbers by position * inv_freq[j].
    c = LLAMA
    cos, sin = te.rope_tables(c, 9)
    x = torch.randn(9, c.head_dim, generator=g)
    y = x * cos + te.rotate_half(x) * sin
    h = c.head_dim // 2
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).double() / c.head_dim))
    ang = torch.arange(9).double()[:, None] * inv[None]
    z = torch.complex(x[:, :h].double(), x[:, h:].double()) * torch.polar(torch.ones_like(ang), ang)
    assert torch.allclose(y.double(), torch.cat([z.real, z.imag], -1), atol=1e-5)

    # The mask: causal, padded keys invisible, padded query rows see exactly the valid keys.
    m = te.attention_mask(5, [3])[0]
    assert m.tolist() == [[True, False, False, False, False], [True, True, False, False, False],
                          [True, True, True, False, False], [True, True, True, False, False],
                          [True, True, True, False, False]]

    # Right padding does not touch the valid positions: item 1 alone, truncated to its valid tokens, gives the
    # same rows (causal attention never looks right).
    full = te.llama_hidden_states(c, llama_params, llama_ids, LLAMA_VALID)
    v1 = LLAMA_VALID[1]
    alone = te.llama_hidden_states(c, llama_params, llama_ids[1:, :v1], [v1])
    for n in range(c.num_hidden_layers + 1):
        assert torch.allclose(full["hidden_states"][n][1, :v1], alone["hidden_states"][n][0], atol=1e-5), n
    # ...and with a pure causal mask (no attention mask) the valid rows do not change either.
    causal = te.llama_hidden_states(c, llama_params, llama_ids, [LLAMA_LEN, LLAMA_LEN])
    assert torch.allclose(full["hidden_states"][2][1, :v1], causal["hidden_states"][2][1, :v1], atol=1e-5)
    report["llama_pad_rows_masked_vs_causal_max_abs"] = float(
        (full["hidden_states"][2][1, v1:] - causal["hidden_states"][2][1, v1:]).abs().max())

    # hidden_states[-3] = the state after L-2 layers: the same as a model cut to L-2 layers (no final norm).
    cut = te.LlamaConfig(**{**te.asdict(c), "num_hidden_layers": c.num_hidden_layers - 2})
    cut_params = OrderedDict((k, v) for k, v in llama_params.items() if k in te.llama_param_shapes(cut))
    assert torch.equal(full["hidden_states"][-3], te.llama_hidden_states(cut, cut_params, llama_ids, LLAMA_VALID)
                       ["after_all_layers"])

    # GQA = multi-head attention with each KV head's weights repeated for its query heads.
    mha = te.LlamaConfig(**{**te.asdict(c), "num_key_value_heads": c.num_attention_heads})
    rep = c.num_attention_heads // c.num_key_value_heads
    mha_params = OrderedDict()
    for k, v in llama_params.items():
        if k.endswith("k_proj.weight") or k.endswith("v_proj.weight"):
            v = v.view(c.num_key_value_heads, c.head_dim, -1).repeat_interleave(rep, 0).reshape(-1, v.shape[-1])
        mha_params[k] = v
    assert torch.allclose(te.llama_hidden_states(mha, mha_params, llama_ids, LLAMA_VALID)["after_all_layers"],
                          full["after_all_layers"], atol=1e-4)

    # CLIP: the pooled output does not depend on the attention mask (causal, pooled at EOS); the two pooling
    # rules agree on these ids (EOS = the largest id, padding = EOS).
    cc = CLIP
    plain = te.clip_forward(cc, clip_params, clip_ids)
    masked = te.clip_forward(cc, clip_params, clip_ids, clip_valid)
    assert torch.allclose(plain["pooler_output"], masked["pooler_output"], atol=1e-6)
    assert plain["pool_positions"].tolist() == [v - 1 for v in clip_valid]
    first_eos = te.ClipTextConfig(**{**te.asdict(cc), "eos_token_id": CLIP_EOS})
    assert te.clip_pool_positions(first_eos, clip_ids).tolist() == [v - 1 for v in clip_valid]
    assert te.clip_pool_positions(first_eos, torch.tensor([[5, 6, 7]])).tolist() == [0]  # no EOS: position 0
    report["clip_pad_rows_masked_vs_plain_max_abs"] = float(
        (plain["last_hidden_state"] - masked["last_hidden_state"]).abs().max())

    # Rounding of the fp32 reference (against fp64) and of a bf16 model (the emulation) against fp32.
    f64 = te.llama_hidden_states(c, llama_params, llama_ids, LLAMA_VALID, dtype=torch.float64)
    bf = te.llama_hidden_states(c, llama_params, llama_ids, LLAMA_VALID, act_dtype=torch.bfloat16)
    report["llama_fp32_vs_fp64_nmse"] = {
        "hidden_2": nmse(full["hidden_states"][2], f64["hidden_states"][2]),
        "last": nmse(full["hidden_states"][-1], f64["hidden_states"][-1])}
    report["llama_bf16_vs_fp32_nmse"] = {
        "hidden_2": nmse(bf["hidden_states"][2], full["hidden_states"][2]),
        "after_all_layers": nmse(bf["after_all_layers"], full["after_all_layers"]),
        "last": nmse(bf["hidden_states"][-1], full["hidden_states"][-1])}
    c64 = te.clip_forward(cc, clip_params, clip_ids, dtype=torch.float64)
    cbf = te.clip_forward(cc, clip_params, clip_ids, act_dtype=torch.bfloat16)
    report["clip_fp32_vs_fp64_nmse"] = {"last": nmse(plain["last_hidden_state"], c64["last_hidden_state"]),
                                        "pooled": nmse(plain["pooler_output"], c64["pooler_output"])}
    report["clip_bf16_vs_fp32_nmse"] = {"last": nmse(cbf["last_hidden_state"], plain["last_hidden_state"]),
                                        "pooled": nmse(cbf["pooler_output"], plain["pooler_output"])}
    for v in list(report["llama_fp32_vs_fp64_nmse"].values()) + list(report["clip_fp32_vs_fp64_nmse"].values()):
        assert v < 1e-11, report
    # The C++ CUDA test compares bf16 outputs with these goldens at NMSE 1e-3: keep a wide margin.
    for v in list(report["llama_bf16_vs_fp32_nmse"].values()) + list(report["clip_bf16_vs_fp32_nmse"].values()):
        assert v < 1e-4, report
    return report


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "text"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    llama_params = te.init_random(te.llama_param_shapes(LLAMA), LLAMA_SEED)
    clip_params = te.init_random(te.clip_param_shapes(CLIP), CLIP_SEED, embed_std=0.5)
    llama_ids, clip_ids, clip_valid = make_inputs()
    report = self_checks(llama_params, clip_params, llama_ids, clip_ids, clip_valid)

    ls = te.llama_hidden_states(LLAMA, llama_params, llama_ids, LLAMA_VALID)
    cp = te.clip_forward(CLIP, clip_params, clip_ids)
    cm = te.clip_forward(CLIP, clip_params, clip_ids, clip_valid)

    io = OrderedDict()
    desc = OrderedDict()
    for n in range(LLAMA.num_hidden_layers):
        io[f"llama_hidden_{n}"] = ls["hidden_states"][n]
        desc[f"llama_hidden_{n}"] = f"hidden_states[{n}]: the state after {n} decoder layers (no final norm)"
    n = LLAMA.num_hidden_layers
    io[f"llama_hidden_{n}"] = ls["after_all_layers"]
    desc[f"llama_hidden_{n}"] = f"the state after all {n} layers, no final norm"
    io["llama_last_hidden_state"] = ls["hidden_states"][-1]
    desc["llama_last_hidden_state"] = "norm(after all layers) = hidden_states[-1] = last_hidden_state"
    io["clip_last_hidden_state"] = cp["last_hidden_state"]
    desc["clip_last_hidden_state"] = "CLIPTextModel(ids).last_hidden_state: pure causal mask (diffusers' call)"
    io["clip_last_hidden_state_masked"] = cm["last_hidden_state"]
    desc["clip_last_hidden_state_masked"] = "the same with attention_mask (the original HunyuanVideo's call)"
    io["clip_pooled"] = cp["pooler_output"]
    desc["clip_pooled"] = "pooler_output at the EOS position (either call)"
    io["clip_layer_0"] = cp["layers"][0]
    desc["clip_layer_0"] = "the state after encoder layer 0 (no mask, before the final LayerNorm)"
    io = OrderedDict((k, v.contiguous().to(torch.float32)) for k, v in io.items())

    inputs = {"llama_ids": llama_ids.tolist(), "llama_valid": LLAMA_VALID, "llama_seq_len": LLAMA_LEN,
              "clip_ids": clip_ids.tolist(), "clip_valid": clip_valid, "clip_seq_len": CLIP_LEN,
              "clip_pool_positions": cp["pool_positions"].tolist(), "clip_bos": CLIP_BOS, "clip_eos": CLIP_EOS}
    meta = {"inputs": json.dumps(inputs), "description": json.dumps(desc), "checks": json.dumps(report),
            "llama_config": json.dumps(te.asdict(LLAMA)), "clip_config": json.dumps(te.asdict(CLIP))}

    os.makedirs(os.path.join(args.out, "llama"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "clip"), exist_ok=True)
    with open(os.path.join(args.out, "llama", "config.json"), "w") as f:
        f.write(te.config_json(LLAMA))
    with open(os.path.join(args.out, "clip", "config.json"), "w") as f:
        f.write(te.config_json(CLIP))
    save_file(llama_params, os.path.join(args.out, "llama", "model.safetensors"), {"format": "pt"})
    save_file(clip_params, os.path.join(args.out, "clip", "model.safetensors"), {"format": "pt"})
    save_file(io, os.path.join(args.out, "io.safetensors"), meta)

    # Read back.
    for path, want in ((os.path.join(args.out, "llama", "model.safetensors"), llama_params),
                       (os.path.join(args.out, "clip", "model.safetensors"), clip_params),
                       (os.path.join(args.out, "io.safetensors"), io)):
        got, _ = load_file(path)
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want), path

    sizes = {}
    for root, _, files in os.walk(args.out):
        for fn in files:
            p = os.path.join(root, fn)
            sizes[os.path.relpath(p, args.out)] = os.path.getsize(p)
    total = sum(sizes.values())
    assert total < 2_000_000, sizes
    summary = {"checks": report, "sizes": sizes, "total_bytes": total,
               "llama_params": te.param_count(te.llama_param_shapes(LLAMA)),
               "clip_params": te.param_count(te.clip_param_shapes(CLIP)),
               "tensors": {k: list(v.shape) for k, v in io.items()},
               "stats": {k: {"std": round(float(v.std()), 5), "max_abs": round(float(v.abs().max()), 5)}
                         for k, v in io.items()}}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
