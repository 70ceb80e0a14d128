"""CPU parity check of an exported demo model: the C++ loaders and forward (tests/demo_parity.cc, built as
build/tests/demo_parity) against the PyTorch references, stage by stage, on the exported files themselves:

  token ids (LLM template + padding, CLIP padding), the prompt encoder's text states / valid length / pooled
  vector, one DiT forward (dense, and STA with the model's fixed window in every layer), one VAE decode.

Usage: python3 tools/demo/parity.py --model DIR --parity-bin build/tests/demo_parity [--prompts P ...]
Prints a JSON report; exits 1 if any stage differs by more than the tolerance (relative L2 <= 1e-4 for fp32
on both sides; ids exact).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

import common as C
import demo_tokenizer as T


def load_export(model: str):
    """The exported folders read back into the reference models (values as stored: bf16 / f16 -> fp32)."""
    def rd(sub, fname):
        t, _ = C.sio.load_file(os.path.join(model, sub, fname))
        with open(os.path.join(model, sub, "config.json")) as f:
            return {k: v.float() for k, v in t.items()}, json.load(f)

    dit_w, dit_j = rd("transformer", "diffusion_pytorch_model.safetensors")
    vae_w, vae_j = rd("vae", "diffusion_pytorch_model.safetensors")
    llm_w, llm_j = rd("text_encoder", "model.safetensors")
    clip_w, clip_j = rd("text_encoder_2", "model.safetensors")
    with open(os.path.join(model, "serving.json")) as f:
        te_cfg = json.load(f)["models"][0]["text_encoder"]
    lc = C.te.LlamaConfig(**{k: llm_j[k] for k in C.te.LlamaConfig.__dataclass_fields__})
    cc = C.te.ClipTextConfig(**{k: clip_j[k] for k in C.te.ClipTextConfig.__dataclass_fields__})
    tok = T.TextTokenizers.from_dir(model, template=te_cfg["template"], crop_start=te_cfg["crop_start"],
                                    max_length=te_cfg["max_length"], clip_length=te_cfg["clip_length"])
    return dict(dit=(C.hd.HunyuanVideoConfig.from_json_dict(dit_j), dit_w),
                vae=(C.hv.HunyuanVideoVAEConfig.from_json_dict(vae_j), vae_w),
                llama=(lc, llm_w), clip=(cc, clip_w), tok=tok, skip=te_cfg["skip_layers"])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(model: str, parity_bin: str, prompts, seed: int = 0, tol: float = 1e-4) -> dict:
    m = load_export(model)
    dcfg, dw = m["dit"]
    vcfg, vw = m["vae"]
    tok = m["tok"]
    with open(os.path.join(model, "serving.json")) as f:
        entry = json.load(f)["models"][0]
    tile, window = entry["tile"], entry["defaults"]["sta"]["window"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, dcfg.in_channels, 3, 8, 8, generator=g)
    z = torch.randn(1, vcfg.latent_channels, 2, 4, 4, generator=g)
    meta = {"prompts": list(prompts), "timestep": 700.0, "guidance": 6016.0, "tile": tile, "window": window}
    with tempfile.TemporaryDirectory() as tmp:
        io = os.path.join(tmp, "io.safetensors")
        out = os.path.join(tmp, "out.safetensors")
        C.sio.save_file({"x": x, "z": z}, io, {"meta": json.dumps(meta)})
        cmd = [parity_bin, "--model", model, "--inputs", io, "--out", out, "--template", tok.template,
               "--crop-start", str(tok.crop_start), "--max-length", str(tok.max_length),
               "--skip-layers", str(m["skip"]), "--clip-length", str(tok.clip_length)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        cpp, _ = C.sio.load_file(out)

    enc = C.TextEncoders(m["llama"][0], m["clip"][0])
    enc.llama.load(m["llama"][1])
    enc.clip.load(m["clip"][1])
    report, ok = {"stages": {}}, True
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids_ok = (cpp[f"llm_ids_{i}"].long().view(-1).tolist() == tok.encode_llm(p).ids and
                      cpp[f"clip_ids_{i}"].long().view(-1).tolist() == tok.encode_clip(p).ids)
            c = C.encode_prompts(enc, tok, [p], m["skip"], torch.device("cpu"))
            e = {"ids_equal": ids_ok, "text_len": [int(cpp[f"text_len_{i}"][0]), c["text_len"][0]],
                 "text_states_rel": rel(cpp[f"text_states_{i}"], c["text"]), "pooled_rel": rel(cpp[f"pooled_{i}"], c["pooled"])}
            ok &= ids_ok and e["text_len"][0] == e["text_len"][1] and e["text_states_rel"] <= tol and e["pooled_rel"] <= tol
            report["stages"][f"prompt{i}"] = e
            if i == 0:
                c0 = c
        model_ = C.hd.HunyuanVideoTransformer(dcfg, dw)
        t = torch.tensor([meta["timestep"]])
        gd = torch.tensor([meta["guidance"]])
        dense = model_.forward(x, t, c0["text"], c0["text_mask"], c0["pooled"], gd, attention=C.hd.DenseAttention())
        windows = [tuple(window)] * dcfg.num_attention_heads
        sta = model_.forward(x, t, c0["text"], c0["text_mask"], c0["pooled"], gd,
                             attention=C.hd.StaAttention(tile, windows))
        raw, _ = C.hv.decode(vw, z, vcfg)
    report["stages"]["dit_dense_rel"] = rel(cpp["dit_dense"], dense)
    report["stages"]["dit_sta_rel"] = rel(cpp["dit_sta"], sta)
    report["stages"]["dit_sta_vs_dense_rel"] = rel(sta, dense)
    report["stages"]["vae_rel"] = rel(cpp["vae_raw"], raw)
    for k in ("dit_dense_rel", "dit_sta_rel", "vae_rel"):
        ok &= report["stages"][k] <= tol
    report["ok"] = bool(ok)
    report["tolerance_rel_l2"] = tol
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--parity-bin", required=True)
    ap.add_argument("--prompts", nargs="*", default=["a red circle moves left on a dark blue background",
                                                     "a green square bounces and a white triangle moves up on a gray background"])
    args = ap.parse_args()
    C.set_threads()
    rep = run(args.model, args.parity_bin, args.prompts)
    print(json.dumps(rep))
    sys.exit(0 if rep["ok"] else 1)


if __name__ == "__main__":
    main()
