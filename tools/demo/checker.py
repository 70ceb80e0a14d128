"""Objective check of a generated clip against its demo caption (numpy only; frames [F, H, W, 3] uint8 or float
in [0, 1]). For each object of the caption: pixels within a colour distance of the named colour (and far from
the named background) form its mask per frame; the centroid track gives the motion (net displacement for
left/right/up/down, a vertical reversal for "bounces"); the fill ratio of the mask in its bounding box gives the
shape (circle ~0.79, square ~1.0 (0.81 of the drawn box), triangle ~0.5). The background is checked from the
border pixels.

`check(frames, caption)` -> {"pass": bool, "colour": bool, "motion": bool, "shape": bool, "background": bool, ...}
Ground-truth clips of dataset.py pass (tools/demo/checker.py --self-check).
"""

import argparse
import json
from typing import Dict

import numpy as np

import dataset as D

MIN_PIXELS_FRAC = 0.002  # of the frame, per frame, for the object to count as present


def _mask(frames: np.ndarray, rgb, bg_rgb, tol=70.0):
    d = np.sqrt(((frames - np.asarray(rgb, np.float32)) ** 2).sum(-1))
    dbg = np.sqrt(((frames - np.asarray(bg_rgb, np.float32)) ** 2).sum(-1))
    # the nearest named colour must be this one (among objects colours and the background)
    others = [c for c in D.COLOURS.values() if tuple(c) != tuple(rgb)]
    nearest_other = np.min(np.stack([np.sqrt(((frames - np.asarray(c, np.float32)) ** 2).sum(-1)) for c in others]), 0)
    return (d < tol) & (d < nearest_other) & (d < dbg)


def check(frames, caption: str) -> Dict:
    f = np.asarray(frames, np.float32)
    if f.max() <= 1.0 + 1e-6:
        f = f * 255.0
    spec = D.parse_caption(caption)
    F_, H, W, _ = f.shape
    border = np.concatenate([f[:, :3].reshape(-1, 3), f[:, -3:].reshape(-1, 3), f[:, :, :3].reshape(-1, 3),
                             f[:, :, -3:].reshape(-1, 3)])
    bg_med = np.median(border, 0)
    bg_named = np.asarray(D.BACKGROUNDS[spec.background], np.float32)
    bg_ok = bool(np.sqrt(((bg_med - bg_named) ** 2).sum()) <
                 min(np.sqrt(((bg_med - np.asarray(c, np.float32)) ** 2).sum())
                     for n, c in D.BACKGROUNDS.items() if n != spec.background))
    out = {"background": bg_ok, "objects": []}
    for obj in spec.objects:
        m = _mask(f, D.COLOURS[obj.colour], bg_named)
        area = m.reshape(F_, -1).sum(1)
        present = area >= MIN_PIXELS_FRAC * H * W
        r = {"colour": bool(present.mean() >= 0.8)}
        if present.sum() >= 2:
            ys, xs = np.mgrid[0:H, 0:W]
            cx = np.array([(xs * m[i]).sum() / max(1, area[i]) for i in range(F_)])
            cy = np.array([(ys * m[i]).sum() / max(1, area[i]) for i in range(F_)])
            idx = np.nonzero(present)[0]
            dx, dy = cx[idx[-1]] - cx[idx[0]], cy[idx[-1]] - cy[idx[0]]
            side = float(min(H, W))
            if obj.motion == "bounces":
                vy = np.diff(cy[idx])
                rev = np.sum(np.sign(vy[:-1]) * np.sign(vy[1:]) < 0) if len(vy) > 1 else 0
                r["motion"] = bool(rev >= 1 and abs(dx) < 0.1 * side and (cy[idx].max() - cy[idx].min()) > 0.08 * side)
            else:
                ux, uy = D.DIRECTIONS[obj.motion]
                along = dx * ux + dy * uy
                across = abs(dx * uy - dy * ux)
                r["motion"] = bool(along > 0.1 * side and across < 0.5 * along)
            fills = []
            for i in idx:
                yy, xx = np.nonzero(m[i])
                box = (yy.max() - yy.min() + 1) * (xx.max() - xx.min() + 1)
                fills.append(area[i] / box)
            fill = float(np.median(fills))
            shape = "triangle" if fill < 0.64 else ("circle" if fill < 0.9 else "square")
            r["shape"], r["fill"] = shape == obj.shape, fill
            r["displacement"] = [float(dx), float(dy)]
        else:
            r["motion"] = r["shape"] = False
        r["pass"] = r["colour"] and r["motion"] and r["shape"]
        out["objects"].append(r)
    first = out["objects"][0]
    out.update(colour=first["colour"], motion=first["motion"], shape=first["shape"])
    out["pass"] = bool(bg_ok and all(o["pass"] for o in out["objects"]))
    return out


def _self_check(n, frames, size, split):
    import torch

    b = D.make_batch(torch.Generator().manual_seed(11), n, frames, size, size, split, two_object_prob=0.0)
    res = []
    for i in range(n):
        v = ((b.video[i].permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).numpy()
        res.append(check(v, b.captions[i]))
    acc = {k: float(np.mean([r[k] for r in res])) for k in ("pass", "colour", "motion", "shape", "background")}
    fails = [(b.captions[i], r) for i, r in enumerate(res) if not r["pass"]][:3]
    # Negatives: each clip against the next clip's caption must mostly fail.
    neg = [check(((b.video[i].permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).numpy(), b.captions[(i + 1) % n])["pass"]
           for i in range(n) if b.captions[i] != b.captions[(i + 1) % n]]
    return {"n": n, "accuracy": acc, "false_pass_on_wrong_captions": float(np.mean(neg)), "failures": fails}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-check", action="store_true")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--split", default="heldout")
    args = ap.parse_args()
    print(json.dumps(_self_check(args.n, args.frames, args.size, args.split), default=str))


if __name__ == "__main__":
    main()
