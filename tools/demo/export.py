"""Exports a trained run to the diffusers-style folders the C++ loaders read for real models, plus a serving
config (docs/serving-config.md) that serves it:

  OUT/transformer/config.json + diffusion_pytorch_model.safetensors   (BF16; model/dit/weights.cc names)
  OUT/vae/config.json + diffusion_pytorch_model.safetensors           (F16; post_quant_conv + decoder.*, model/vae)
  OUT/text_encoder/config.json + model.safetensors                    (BF16; HF LlamaModel, "model." prefix)
  OUT/text_encoder_2/config.json + model.safetensors                  (BF16; HF CLIPTextModel names)
  OUT/tokenizer/tokenizer.json, OUT/tokenizer_2/tokenizer.json        (HF tokenizer.json)
  OUT/serving.json                                                    ({"models": [entry]}, paths relative to OUT)
  OUT/export.json                                                     (sizes, parameter counts, sources)
  OUT/heldout.json                                                    (the 20 evaluation prompts, dataset.heldout_prompts;
                                                                       check_video.py reads them without torch)

Usage: python3 tools/demo/export.py --run RUN --out DIR [--dit sta|dit|auto] [--name demo]
"""

import argparse
import json
import os
import shutil
from collections import OrderedDict
from typing import Optional

import torch

import common as C
import dataset as D
import demo_tokenizer as T


def _write(folder, fname, tensors, config: dict):
    os.makedirs(folder, exist_ok=True)
    C.sio.save_file(tensors, os.path.join(folder, fname), {"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return os.path.getsize(os.path.join(folder, fname))


def serving_entry(spec: C.Spec, name: str, rel: str = ".", dense_steps: Optional[int] = None) -> dict:
    """The model's entry of a serving config; dense_steps: the default fixed window's dense first steps
    (None: 2, 1 for toy runs)."""
    if dense_steps is None:
        dense_steps = 2 if not spec.toy else 1
    j = lambda *p: os.path.normpath(os.path.join(rel, *p))  # noqa: E731
    return OrderedDict(
        name=name,
        description=("HunyuanVideo architecture, trained by us on procedural videos of shapes "
                     "(docs/demo-model.md): prompts like 'a red circle moves left on a dark blue background'"),
        dit={"dir": j("transformer")},
        vae={"dir": j("vae")},
        text_encoder=OrderedDict(
            llama={"dir": j("text_encoder"), "tokenizer": j("tokenizer", "tokenizer.json")},
            clip={"dir": j("text_encoder_2"), "tokenizer": j("tokenizer_2", "tokenizer.json")},
            template=T.DEMO_TEMPLATE, crop_start=T.DEMO_CROP_START, max_length=T.DEMO_MAX_LENGTH,
            skip_layers=spec.skip_layers, clip_length=T.DEMO_CLIP_LENGTH),
        tile=list(spec.tile),
        max_frames=spec.frames,
        max_pixels=spec.height * spec.width,
        defaults=OrderedDict(frames=spec.frames, height=spec.height, width=spec.width, steps=20 if not spec.toy else 2,
                             guidance=6.0, flow_shift=spec.flow_shift, fps=12,
                             sta={"kind": "fixed", "window": list(spec.window), "dense_steps": dense_steps}),
    )


def export(run: str, out: str, which: str = "auto", name: str = "demo", dense_steps: Optional[int] = None) -> dict:
    spec = C.Spec.load(run)
    tok = T.TextTokenizers.from_dir(run)
    os.makedirs(out, exist_ok=True)
    sizes = {}

    # DiT
    if which == "auto":
        which = "sta" if os.path.isdir(os.path.join(run, "sta")) else "dit"
    t, meta = C.load_tensors(os.path.join(run, which), which)
    cfg = spec.dit_config()
    w = OrderedDict((n, t["w." + n].to(torch.bfloat16)) for n in C.hd.param_shapes(cfg))
    sizes["transformer"] = _write(os.path.join(out, "transformer"), "diffusion_pytorch_model.safetensors", w,
                                  cfg.to_json_dict())

    # VAE decoder (+ post_quant_conv); the encoder stays in the training checkpoint
    t, vmeta = C.load_tensors(os.path.join(run, "vae"), "vae")
    vcfg = spec.vae_config(scaling_factor=float(vmeta["scaling_factor"]))
    w = OrderedDict((n, t["dec." + n].to(torch.float16)) for n in C.hv.decoder_param_shapes(vcfg))
    vj = vcfg.to_json_dict()
    vj["_note"] = "trained for the stavid demo; scaling_factor = 1 / std of the encoder means"
    sizes["vae"] = _write(os.path.join(out, "vae"), "diffusion_pytorch_model.safetensors", w, vj)

    # Text encoders
    t, _ = C.load_tensors(os.path.join(run, "text"), "text")
    lc = spec.llama_config(tok.llm_vocab_size)
    w = OrderedDict((n, t["llama." + n].to(torch.bfloat16)) for n in C.te.llama_param_shapes(lc))
    lj = lc.to_hf_json()
    lj.update(bos_token_id=tok.llm_bos, eos_token_id=tok.llm.added["<|eot_id|>"], pad_token_id=tok.llm_pad,
              torch_dtype="bfloat16")
    sizes["text_encoder"] = _write(os.path.join(out, "text_encoder"), "model.safetensors", w, lj)
    cc = spec.clip_config(tok.clip_vocab_size, tok.clip_eos)
    w = OrderedDict((n, t["clip." + n].to(torch.bfloat16)) for n in C.te.clip_param_shapes(cc))
    cj = cc.to_hf_json()
    cj["torch_dtype"] = "bfloat16"
    sizes["text_encoder_2"] = _write(os.path.join(out, "text_encoder_2"), "model.safetensors", w, cj)

    for sub in ("tokenizer", "tokenizer_2"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        shutil.copyfile(os.path.join(run, sub, "tokenizer.json"), os.path.join(out, sub, "tokenizer.json"))
        sizes[sub] = os.path.getsize(os.path.join(out, sub, "tokenizer.json"))

    with open(os.path.join(out, "heldout.json"), "w") as f:
        json.dump(D.heldout_prompts(20), f, indent=1)
        f.write("\n")
    entry = serving_entry(spec, name, dense_steps=dense_steps)
    with open(os.path.join(out, "serving.json"), "w") as f:
        json.dump({"models": [entry]}, f, indent=2)
        f.write("\n")
    info = {"run": os.path.abspath(run), "dit_checkpoint": which, "dit_step": meta.get("step"),
            "bytes": sizes, "total_bytes": sum(sizes.values()),
            "params": {"transformer": C.hd.param_count(cfg), "vae_decoder": C.hv.decoder_param_count(vcfg),
                       "text_encoder": C.te.param_count(C.te.llama_param_shapes(lc)),
                       "text_encoder_2": C.te.param_count(C.te.clip_param_shapes(cc))},
            "scaling_factor": vcfg.scaling_factor, "tile": spec.tile, "window": spec.window,
            "sta_sparsity_native": C.sta_sparsity(native_canvas(spec), spec.tile, spec.window)}
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    return info


def native_canvas(spec: C.Spec):
    vc, dc = spec.vae_config(), spec.dit_config()
    p, pt = dc.patch_size, dc.patch_size_t
    t = (spec.frames - 1) // vc.temporal_compression_ratio + 1
    return (t // pt, spec.height // vc.spatial_compression_ratio // p, spec.width // vc.spatial_compression_ratio // p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dit", default="auto", choices=["auto", "sta", "dit"])
    ap.add_argument("--name", default="demo")
    ap.add_argument("--dense-steps", type=int, default=None, help="the default fixed window's dense first steps")
    args = ap.parse_args()
    print(json.dumps(export(args.run, args.out, args.dit, args.name, args.dense_steps)))


if __name__ == "__main__":
    main()
