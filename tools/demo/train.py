"""Trains the embedded demo model, one stage per command (docs/demo-model.md has the device-call plan):

  train.py text --run RUN [--toy]      BPE tokenizers (LLM + CLIP layouts) on the caption corpus, then the tiny
                                       Llama (next-token prediction on the templated captions) and CLIP text tower
                                       (attribute classification from the pooled vector)
  train.py vae  --run RUN              causal 3-D VAE: our encoder + the HunyuanVideo decoder (small channels),
                                       L1 + L2 + edge + tiny KL loss; ends by measuring the latent scaling factor
  train.py dit  --run RUN              the DiT (dual + single blocks, 3-D RoPE), flow matching on VAE latents of
                                       training clips; frozen text encoders; 10% empty captions; first at the low
                                       size, then at the native size (--native-from)
  train.py sta  --run RUN              STA fine-tuning with the fixed window (spec.window, spec.tile): data loss
                                       + 0.5 final-output distillation + 0.5 per-layer attention-output
                                       distillation from the frozen dense DiT (sta.md section 6)

Every stage is resumable (it continues from RUN/<stage>/ if present), stops on --minutes (saving first) or
--steps, and writes checkpoints as safetensors shards of <= 15 MiB. --toy uses tiny sizes (the CPU smoke test).
bf16 autocast on CUDA; fp32 on the CPU.
"""

import argparse
import json
import math
import os
import random
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

import common as C
import dataset as D
import demo_tokenizer as T


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def load_tokenizers(run: str) -> T.TextTokenizers:
    return T.TextTokenizers.from_dir(run)


def build_text(spec: C.Spec, tok: T.TextTokenizers) -> C.TextEncoders:
    return C.TextEncoders(spec.llama_config(tok.llm_vocab_size), spec.clip_config(tok.clip_vocab_size, tok.clip_eos))


def load_text(run: str, spec: C.Spec, device) -> tuple:
    tok = load_tokenizers(run)
    enc = build_text(spec, tok)
    t, _ = C.load_tensors(os.path.join(run, "text"), "text")
    enc.llama.load({k[len("llama."):]: v for k, v in t.items() if k.startswith("llama.")})
    enc.clip.load({k[len("clip."):]: v for k, v in t.items() if k.startswith("clip.")})
    return tok, enc.to(device).eval().requires_grad_(False)


def load_vae(run: str, spec: C.Spec, device) -> tuple:
    t, meta = C.load_tensors(os.path.join(run, "vae"), "vae")
    vae = C.VAE(spec.vae_config())
    vae.dec.load({k[4:]: v for k, v in t.items() if k.startswith("dec.")})
    vae.enc.load({k[4:]: v for k, v in t.items() if k.startswith("enc.")})
    return vae.to(device).eval().requires_grad_(False), float(meta.get("scaling_factor", 1.0))


def _save_stage(folder, prefix, model_params: "OrderedDict", opt, step, extra_meta, save_opt=True):
    tensors = OrderedDict()
    names, params = [], []
    for group, ps in model_params.items():
        for n, p in ps.dict().items():
            tensors[f"{group}.{n}"] = p.detach().float().cpu()
            names.append(f"{group}.{n}")
            params.append(p)
    if save_opt and opt is not None:
        st, _ = C.optimizer_state(opt, names, params)
        tensors.update(st)
    meta = dict(extra_meta, step=step, saved=time.strftime("%Y-%m-%d %H:%M:%S"))
    C.save_tensors(folder, prefix, tensors, meta)
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump(meta, f, indent=1)


def _resume(folder, prefix, model_params: "OrderedDict", opt):
    if not os.path.isdir(folder) or not any(f.startswith(prefix + "-") for f in os.listdir(folder)):
        return 0, {}
    t, meta = C.load_tensors(folder, prefix)
    names, params = [], []
    for group, ps in model_params.items():
        ps.load({k[len(group) + 1:]: v for k, v in t.items() if k.startswith(group + ".")})
        for n, p in ps.dict().items():
            names.append(f"{group}.{n}")
            params.append(p)
    if opt is not None:
        C.restore_optimizer(opt, names, params, t, int(meta.get("step", 0)))
    return int(meta.get("step", 0)), meta


def _progress(step, total, budget):
    """Fraction of the stage done: by steps, or by the call's time budget when that ends first."""
    p = step / max(1, total)
    if budget is not None and budget.limit:
        p = max(p, budget.elapsed() / budget.limit)
    return min(1.0, p)


def _lr(step, base, warmup, total=None, floor=0.1, budget=None, start=0):
    """Linear warm-up (over the first `warmup` steps of this call: a resumed stage warms up again, its
    optimizer moments may be fresh), then cosine decay to floor * base over the stage's progress (steps or
    time budget)."""
    if step - start < warmup:
        return base * (step - start + 1) / warmup
    if total:
        p = _progress(step, total, budget)
        return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))
    return base


def _optimizer_step(opt, params, loss, lr):
    """One AdamW step at learning rate lr, gradients clipped to norm 1 (every stage's update)."""
    for gp in opt.param_groups:
        gp["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


# ---------------------------------------------------------------------------------------------------------
# Stage: tokenizers + text encoders
# ---------------------------------------------------------------------------------------------------------


def _caption_targets(spec_list):
    """Attribute labels of each caption (object 1 and object 2, 'none' for a missing second object)."""
    rows = []
    for s in spec_list:
        o1 = s.objects[0]
        o2 = s.objects[1] if len(s.objects) > 1 else None
        rows.append([D.COLOUR_NAMES.index(o1.colour), D.SHAPES.index(o1.shape), D.MOTIONS.index(o1.motion),
                     D.BACKGROUND_NAMES.index(s.background),
                     D.COLOUR_NAMES.index(o2.colour) if o2 else len(D.COLOUR_NAMES),
                     D.SHAPES.index(o2.shape) if o2 else len(D.SHAPES),
                     D.MOTIONS.index(o2.motion) if o2 else len(D.MOTIONS)])
    return torch.tensor(rows)


def stage_text(args, spec, device, log):
    corpus = D.all_caption_texts()
    info = T.train_tokenizers(corpus, args.run, backend=args.tokenizer_backend)
    log(stage="text", event="tokenizers", **info)
    tok = load_tokenizers(args.run)
    enc = build_text(spec, tok).to(device)
    classes = [len(D.COLOUR_NAMES), len(D.SHAPES), len(D.MOTIONS), len(D.BACKGROUND_NAMES),
               len(D.COLOUR_NAMES) + 1, len(D.SHAPES) + 1, len(D.MOTIONS) + 1]
    heads = torch.nn.ModuleList([torch.nn.Linear(spec.clip["hidden_size"], k) for k in classes]).to(device)
    params = list(enc.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr or 2e-3, weight_decay=0.01)
    folder = os.path.join(args.run, "text")
    step, _ = _resume(folder, "text", OrderedDict(llama=enc.llama, clip=enc.clip), None)
    budget = C.Budget(args.minutes)
    g = _gen(args.seed + step)
    total = args.steps or (60 if spec.toy else 1500)
    lm = cls = torch.tensor(float("nan"))  # reported as NaN when the budget allows no step
    while step < total and not budget.over():
        specs = D.sample_specs(g, args.batch or (8 if spec.toy else 128), "train")
        prompts = [s.caption() for s in specs] + [""]
        lp = [tok.encode_llm(p) for p in prompts]
        ids = torch.tensor([p.ids for p in lp], device=device)
        valid = [p.length for p in lp]
        with C.autocast(device):
            states = enc.llama_states(ids, valid)
            h = states[-1]  # final-normed state; tied embeddings as the LM head
            logits = h @ enc.llama.dict()["model.embed_tokens.weight"].t()
            tgt = ids[:, 1:].clone()
            m = torch.tensor([[1 if j + 1 < v else 0 for j in range(ids.shape[1] - 1)] for v in valid], device=device)
            lm = (F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                  reduction="none") * m.reshape(-1)).sum() / m.sum()
            pooled = enc.clip_pooled(torch.tensor([tok.encode_clip(p).ids for p in prompts[:-1]], device=device))
            y = _caption_targets(specs).to(device)
            cls = sum(F.cross_entropy(hd(pooled).float(), y[:, i]) for i, hd in enumerate(heads)) / len(heads)
            loss = lm + cls
        _optimizer_step(opt, params, loss, _lr(step, args.lr or 2e-3, 50, total, budget=budget))
        step += 1
        if step % args.log_every == 0 or step == total:
            log(stage="text", step=step, lm=float(lm), cls=float(cls), t=round(budget.elapsed(), 1))
    _save_stage(folder, "text", OrderedDict(llama=enc.llama, clip=enc.clip), None, step,
                {"lm": float(lm), "cls": float(cls)})
    log(stage="text", event="saved", step=step)


# ---------------------------------------------------------------------------------------------------------
# Stage: VAE
# ---------------------------------------------------------------------------------------------------------


def _edges(x):
    return (x[..., 1:, :] - x[..., :-1, :]), (x[..., :, 1:] - x[..., :, :-1])


def stage_vae(args, spec, device, log):
    vae = C.VAE(spec.vae_config(), seed=args.seed).to(device)
    # --decoder-only: the encoder (hence the latent space and its scaling factor, which a DiT may already be
    # trained on) stays fixed; only the decoder learns (the decoder fine-tuning of latent-diffusion VAEs).
    if args.decoder_only:
        vae.enc.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    # 1e-4: at 1e-3 the VAE learned shapes and luminance but not hue (docs/demo-model.md, session 4, single
    # frames on the CPU: 1e-3 21.4 dB at 700 steps, hues still lost at 1,500; 1e-4 26.2 dB at 700, hues right).
    base_lr = args.lr or 1e-4
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.0, betas=(0.9, 0.99))
    folder = os.path.join(args.run, "vae")
    step, resumed = _resume(folder, "vae", OrderedDict(dec=vae.dec, enc=vae.enc), opt)
    start_step = step
    if args.decoder_only and step == 0:
        raise SystemExit("train.py vae --decoder-only: no VAE checkpoint in the run folder to fine-tune")
    if step == 0 and args.logvar_init:
        # Start with a small posterior std: with the default init the sampled latent's noise (std 1) drowns the
        # mean, and a weakly weighted KL lets the decoder learn to average over it (blur, washed-out colours).
        with torch.no_grad():
            vae.enc.dict()["encoder.conv_out.conv.bias"][spec.vae["latent_channels"]:] += args.logvar_init
    budget = C.Budget(args.minutes)
    total = args.steps or (30 if spec.toy else 4000)
    g = _gen(args.seed + 1000 + step)
    B = args.batch or (2 if spec.toy else 8)
    # Clips alternate between few frames at the native size and the full clip length (the decoder is causal and
    # convolutional; its mid-block attention sees every position).
    frame_counts = [int(f) for f in args.vae_frames.replace("/", ",").split(",")] if args.vae_frames else \
        [9 if not spec.toy else 5, spec.frames]
    sizes = [(f, spec.height, spec.width) for f in frame_counts]
    l1 = torch.tensor(float("nan"))  # reported as NaN when the budget allows no step
    # A fixed held-out batch at the native frame size (9 frames), decoded from the encoder means every
    # 10 log intervals: the learning curve without the training batches' noise (9 / 17 frames, crops).
    val = D.make_batch(torch.Generator().manual_seed(11), 2 if spec.toy else 4, 9 if not spec.toy else 5,
                       spec.height, spec.width, "heldout", device=device).video

    def val_psnr():
        with torch.no_grad(), C.autocast(device):
            rec = vae.decode_raw(vae.encode(val)[0]).float()
        return C.video_psnr(rec, val)

    while step < total and not budget.over():
        F_, H, W = sizes[step % len(sizes)]
        x = D.make_batch(g, B, F_, H, W, "train", device=device).video
        if args.crop and args.crop < min(H, W):
            # Random crops (multiples of 8 pixels) of full-size renders: the same object scale as the
            # native clips at a fraction of the cost per step (the VAE is convolutional; its mid-block
            # attention then sees the crop).
            c = args.crop - args.crop % 8
            y0 = 8 * int(torch.randint((H - c) // 8 + 1, (1,), generator=g))
            x0_ = 8 * int(torch.randint((W - c) // 8 + 1, (1,), generator=g))
            x = x[..., y0:y0 + c, x0_:x0_ + c].contiguous()
        with C.autocast(device), torch.set_grad_enabled(not args.decoder_only):
            mean, logvar = vae.encode(x)
        with C.autocast(device):
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            y = vae.decode_raw(z)
        y = y.float()
        l1 = (y - x).abs().mean()
        l2 = ((y - x) ** 2).mean()
        ey, ex = _edges(y), _edges(x)
        le = sum((a - b).abs().mean() for a, b in zip(ey, ex))
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).mean()
        loss = l1 + l2 + le + args.kl_weight * kl
        _optimizer_step(opt, params, loss, _lr(step, base_lr, 100, total, budget=budget, start=start_step))
        step += 1
        if step % args.log_every == 0 or step == total:
            psnr = C.psnr_from_mse(l2)
            extra = {"val_psnr": round(val_psnr(), 2)} if step % (10 * args.log_every) == 0 else {}
            log(stage="vae", step=step, l1=float(l1), psnr=psnr, edge=float(le), kl=float(kl),
                t=round(budget.elapsed(), 1), **extra)
    # Latent scaling factor: 1 / std of the encoder means over fresh training clips at the native size (kept
    # as it was when the encoder is frozen: a DiT trained on these latents must see the same scale).
    if args.decoder_only:
        sf, std = float(resumed["scaling_factor"]), float(resumed["latent_std"])
    else:
        with torch.no_grad(), C.autocast(device):
            zs = [vae.encode(D.make_batch(g, B, spec.frames, spec.height, spec.width, "train",
                                          device=device).video)[0].float() for _ in range(4 if not spec.toy else 1)]
        std = float(torch.cat([z.flatten() for z in zs]).std())
        sf = 1.0 / max(std, 1e-6)
    _save_stage(folder, "vae", OrderedDict(dec=vae.dec, enc=vae.enc), opt, step,
                {"scaling_factor": sf, "latent_std": std, "l1": float(l1)}, save_opt=not args.no_optimizer_state)
    log(stage="vae", event="saved", step=step, scaling_factor=sf, val_psnr=round(val_psnr(), 2))


# ---------------------------------------------------------------------------------------------------------
# Stage: DiT (dense) and STA fine-tuning
# ---------------------------------------------------------------------------------------------------------


class Conditioner:
    """Frozen text encoders + VAE encoder: clips -> (latents x0 in the DiT's scale, text conditions)."""

    def __init__(self, run, spec, device):
        self.spec, self.device = spec, device
        self.tok, self.text = load_text(run, spec, device)
        self.vae, self.sf = load_vae(run, spec, device)

    @torch.no_grad()
    def batch(self, g, B, size, split="train", empty_prob=0.1):
        F_, H, W = size
        b = D.make_batch(g, B, F_, H, W, split, device=self.device)
        with C.autocast(self.device):
            mean, _ = self.vae.encode(b.video)
        x0 = mean.float() * self.sf
        drop = torch.rand(B, generator=g) < empty_prob
        prompts = ["" if d else c for d, c in zip(drop.tolist(), b.captions)]
        cond = self.cond(prompts)
        return x0, cond, b

    @torch.no_grad()
    def cond(self, prompts):
        with C.autocast(self.device):
            c = C.encode_prompts(self.text, self.tok, prompts, self.spec.skip_layers, self.device)
        c["text"] = c["text"].float()
        c["pooled"] = c["pooled"].float()
        return c


def _flow_inputs(g, g_noise, x0, shift, device):
    """Flow-matching inputs for clean latents x0: timesteps and guidance from the CPU generator g, the noise
    from g_noise on the device (a CPU draw of a 64-clip latent batch takes 0.1-0.2 s, as long as a DiT step)."""
    B = x0.shape[0]
    sig = C.sample_sigmas(g, B, shift, device)
    noise = torch.randn(x0.shape, generator=g_noise, device=device)
    s = sig.view(B, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    guidance = (1.0 + 7.0 * torch.rand(B, generator=g)).to(device) * 1000.0  # not distilled: the DiT learns to ignore it
    return xt, sig * 1000.0, noise - x0, guidance


def stage_dit(args, spec, device, log, sta: bool = False):
    cond = Conditioner(args.run, spec, device)
    cfg = spec.dit_config()
    dit = C.DiT(cfg, seed=args.seed, fused=not args.reference_dit).to(device)
    name = "sta" if sta else "dit"
    folder = os.path.join(args.run, name)
    teacher = None
    if sta:
        t, _ = C.load_tensors(os.path.join(args.run, "dit"), "dit")
        dense_w = {k[2:]: v for k, v in t.items() if k.startswith("w.")}
        teacher = C.DiT(cfg, fused=not args.reference_dit).to(device)
        teacher.w.load(dense_w)
        teacher.eval().requires_grad_(False)
        dit.w.load(dense_w)
    params = list(dit.parameters())
    base_lr = args.lr or (1e-4 if sta else 5e-4)
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.0, betas=(0.9, 0.99))
    step, _ = _resume(folder, name, OrderedDict(w=dit.w), opt)
    # Fresh Adam moments (a checkpoint saved or stripped without them, strip_optimizer.py) warm up again from
    # here; restored moments go straight on.
    warm_from = step if step and not any(opt.state.get(p) for p in params) else 0
    budget = C.Budget(args.minutes)
    total = args.steps or (20 if spec.toy else (1500 if sta else 6000))
    g = _gen(args.seed + (5000 if sta else 2000) + step)
    g_noise = torch.Generator(device=device).manual_seed(args.seed + (7000 if sta else 3000) + step)
    low = (spec.low_frames, spec.low_height, spec.low_width)
    native = (spec.frames, spec.height, spec.width)
    B_low = args.batch or (2 if spec.toy else 64)
    B_nat = max(1, B_low // 4) if not spec.toy else 2
    windows = C.sta_windows(spec)
    dense = C.Attention("dense", impl=args.attn_impl, record=sta)
    student_attn = C.Attention("sta", spec.tile, windows, impl=args.attn_impl, record=sta) if sta else dense
    # A pool of encoded batches: rendering + VAE-encoding a batch costs more than a DiT step, so each
    # batch serves about `reuse` steps (fresh noise and timesteps every time), drawn at random from
    # the last `pool` batches. reuse 1 = a fresh batch every step.
    pool, pool_size, batch_s = [], max(1, args.pool), 0.0
    while step < total and not budget.over():
        use_native = sta or _progress(step, total, budget) >= args.native_from
        size, B = (native, B_nat) if use_native else (low, B_low)
        pool = [e for e in pool if e[0] == size]
        if len(pool) < min(pool_size, 4) or torch.rand(1, generator=g).item() < 1.0 / max(1, args.reuse):
            t0 = time.time()
            x0, c, _ = cond.batch(g, B, size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            batch_s += time.time() - t0
            pool.append((size, x0, c))
            if len(pool) > pool_size:
                pool.pop(0)
        else:
            _, x0, c = pool[int(torch.randint(len(pool), (1,), generator=g))]
        xt, t, target, guidance = _flow_inputs(g, g_noise, x0, spec.flow_shift, device)
        with C.autocast(device):
            v = dit(xt, t, c["text"], c["text_mask"], c["pooled"], guidance, student_attn).float()
            data = F.mse_loss(v, target)
            loss = data
            extra = {}
            if sta:
                with torch.no_grad():
                    dense.records = {}
                    vt = teacher(xt, t, c["text"], c["text_mask"], c["pooled"], guidance, dense).float()
                out_d = F.mse_loss(v, vt)
                layers = sorted(student_attn.records)
                attn_d = sum(F.mse_loss(student_attn.records[l].float(), dense.records[l].float()) for l in layers) / len(layers)
                # The paper's recipe: data loss + distillation of the output and of every attention
                # layer from the frozen dense DiT (sta.md section 6); --data-weight and --distill-weight
                # move the balance towards the teacher (session 8: the data term pulled the 95% dense
                # teacher's STA student to 75% dense / 80% STA).
                loss = args.data_weight * data + args.distill_weight * (out_d + attn_d)
                extra = {"out_distill": float(out_d), "attn_distill": float(attn_d)}
                student_attn.records = {}
        lr = _lr(step, base_lr, 20 if sta else 200, total, budget=budget, start=warm_from)
        _optimizer_step(opt, params, loss, lr)
        step += 1
        if step % args.log_every == 0 or step == total:
            log(stage=name, step=step, loss=float(loss), data=float(data), size=list(size), batch=B,
                t=round(budget.elapsed(), 1), batch_s=round(batch_s, 1), **extra)
        if args.save_every and step % args.save_every == 0:
            _save_stage(folder, name, OrderedDict(w=dit.w), opt, step, {}, save_opt=not args.no_optimizer_state)
    _save_stage(folder, name, OrderedDict(w=dit.w), opt, step,
                {"tile": spec.tile, "window": spec.window} if sta else {}, save_opt=not args.no_optimizer_state)
    log(stage=name, event="saved", step=step)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["text", "vae", "dit", "sta"])
    ap.add_argument("--run", required=True, help="run folder (spec.json, tokenizers, checkpoints)")
    ap.add_argument("--toy", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--minutes", type=float, default=None, help="time budget; saves and stops before it")
    ap.add_argument("--steps", type=int, default=None, help="stop at this total step count")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--data-weight", type=float, default=1.0, help="STA stage: weight of the flow-matching data loss")
    ap.add_argument("--distill-weight", type=float, default=0.5,
                    help="STA stage: weight of the output and attention distillation terms (each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--native-from", type=float, default=0.7,
                    help="DiT: fraction of the steps trained at the low size before switching to the native size")
    ap.add_argument("--attn-impl", default="auto", choices=["auto", "flex", "sdpa", "math"])
    ap.add_argument("--tokenizer-backend", default="auto", choices=["auto", "hf", "python"])
    ap.add_argument("--kl-weight", type=float, default=1e-4, help="VAE stage: weight of the mean KL term")
    ap.add_argument("--logvar-init", type=float, default=0.0,
                    help="VAE stage, fresh start: added to the encoder's log-variance bias (e.g. -6)")
    ap.add_argument("--vae-frames", default="",
                    help="VAE stage: clip lengths to cycle through (4k+1), e.g. 9,17 or 9/17 (device_run.sh splits on commas)")
    ap.add_argument("--crop", type=int, default=0, help="VAE stage: train on random square crops of this many pixels")
    ap.add_argument("--reference-dit", action="store_true",
                    help="DiT/STA stages: train through the reference transformer instead of common.FusedTransformer "
                         "(same math, more kernels; for comparisons)")
    ap.add_argument("--reuse", type=int, default=1, help="DiT/STA stages: steps per encoded batch (on average)")
    ap.add_argument("--pool", type=int, default=32, help="DiT/STA stages: encoded batches kept for reuse")
    ap.add_argument("--no-optimizer-state", action="store_true", help="checkpoints without the Adam moments")
    ap.add_argument("--decoder-only", action="store_true",
                    help="vae: fine-tune the decoder of the run's VAE; encoder and scaling factor stay fixed")
    args = ap.parse_args()
    C.set_threads()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = C.pick_device(args.device)
    spec = C.get_or_make_spec(args.run, args.toy)
    log = C.Log(os.path.join(args.run, "logs", f"{args.stage}.jsonl"))
    log(stage=args.stage, event="start", device=str(device), torch=torch.__version__, toy=spec.toy)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # a few fixed conv shapes per stage: pick the fastest algorithms once
    if args.stage == "text":
        stage_text(args, spec, device, log)
    elif args.stage == "vae":
        stage_vae(args, spec, device, log)
    else:
        stage_dit(args, spec, device, log, sta=args.stage == "sta")


if __name__ == "__main__":
    main()
