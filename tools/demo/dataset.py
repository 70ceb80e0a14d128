"""Procedural videos of simple shapes with template captions: the training data of the embedded demo model
(issue 8). Pure torch (CPU or GPU), no image libraries; deterministic by seed.

A clip shows one or two objects (circle, square, triangle; six colours) on a flat background (four colours, a
faint vertical shading whose strength varies), each object moving left, right, up or down at a constant speed or
bouncing (falling under gravity and bouncing off the floor). Captions follow one template:

    "a red circle moves left on a dark blue background"
    "a green square bounces on a black background"
    "a red circle moves left and a white triangle moves up on a gray background"

Held-out split: a fixed set of (colour, shape, motion, background) combinations never appears in training
(neither alone nor as either object of a two-object clip); `split="heldout"` draws only from it. Every single
attribute value, and every pair of attributes of one object, still occurs in training, so the held-out prompts
test composition, not unseen words.

Rendering: objects are anti-aliased (1-pixel linear edge) and placed so that the whole path stays inside the
frame; an object's size is 11-16% of the frame side. Frames are returned in [-1, 1], [B, 3, F, H, W].

CLI: `python3 tools/demo/dataset.py --self-check` (determinism, split disjointness, speed) or
`python3 tools/demo/dataset.py --out DIR --n 8` (writes sample clips as .npy + captions.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

try:
    import torch
except ImportError:  # the caption vocabulary and parse_caption (all checker.py needs) work without torch
    torch = None

SHAPES = ("circle", "square", "triangle")
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 70),
    "blue": (60, 110, 255),
    "yellow": (235, 225, 40),
    "white": (245, 245, 245),
    "purple": (160, 60, 210),
}
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (85, 85, 85),
    "dark blue": (18, 24, 80),
    "dark green": (16, 64, 30),
}
MOTIONS = ("left", "right", "up", "down", "bounces")
# Unit direction in image coordinates (x right, y down) for the straight motions.
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

COLOUR_NAMES = tuple(COLOURS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)

TWO_OBJECT_PROB = 0.3
SIZE_RANGE = (0.11, 0.16)  # object half-extent... as a fraction of the frame side (radius / half side)
TRAVEL_RANGE = (0.35, 0.55)  # distance travelled over the clip, fraction of the frame side


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    motion: str

    def phrase(self) -> str:
        if self.motion == "bounces":
            return f"a {self.colour} {self.shape} bounces"
        return f"a {self.colour} {self.shape} moves {self.motion}"


@dataclass(frozen=True)
class ClipSpec:
    objects: Tuple[ObjectSpec, ...]
    background: str

    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects) + f" on a {self.background} background"


def all_combinations() -> List[Tuple[str, str, str, str]]:
    """Every (colour, shape, motion, background) of a single object: 6 x 3 x 5 x 4 = 360."""
    return list(itertools.product(COLOUR_NAMES, SHAPES, MOTIONS, BACKGROUND_NAMES))


def is_heldout(colour: str, shape: str, motion: str, background: str) -> bool:
    """The fixed held-out rule: 1 combination in 9 (40 of 360), chosen by a modular hash of the attribute indices
    so that each attribute value and each attribute pair keeps training examples."""
    c, s = COLOUR_NAMES.index(colour), SHAPES.index(shape)
    m, b = MOTIONS.index(motion), BACKGROUND_NAMES.index(background)
    return (c * 7 + s * 5 + m * 3 + b * 11) % 9 == 4


def split_combinations(split: str) -> List[Tuple[str, str, str, str]]:
    assert split in ("train", "heldout")
    return [t for t in all_combinations() if is_heldout(*t) == (split == "heldout")]


def clip_in_split(spec: ClipSpec, split: str) -> bool:
    flags = [is_heldout(o.colour, o.shape, o.motion, spec.background) for o in spec.objects]
    return not any(flags) if split == "train" else any(flags)


def sample_specs(gen: torch.Generator, n: int, split: str = "train", two_object_prob: float = TWO_OBJECT_PROB) -> List[ClipSpec]:
    """n clip specs drawn from `split`. Train: every object's combination is a training one. Held-out: the first
    object's combination is held out; a second object (if any) is a training combination with another colour."""
    combos = split_combinations(split)
    train = split_combinations("train")
    out = []
    for _ in range(n):
        i = int(torch.randint(len(combos), (1,), generator=gen))
        colour, shape, motion, bg = combos[i]
        objs = [ObjectSpec(colour, shape, motion)]
        if float(torch.rand((), generator=gen)) < two_object_prob:
            pool = [t for t in train if t[3] == bg and t[0] != colour and t[2] != motion]
            c2, s2, m2, _ = pool[int(torch.randint(len(pool), (1,), generator=gen))]
            objs.append(ObjectSpec(c2, s2, m2))
        out.append(ClipSpec(tuple(objs), bg))
    return out


def parse_caption(caption: str) -> ClipSpec:
    """Inverse of ClipSpec.caption (raises ValueError on text outside the template)."""
    text = caption.strip().lower()
    if " on a " not in text or not text.endswith(" background"):
        raise ValueError(f"not a demo caption: {caption!r}")
    body, bg = text.rsplit(" on a ", 1)
    bg = bg[: -len(" background")]
    if bg not in BACKGROUNDS:
        raise ValueError(f"unknown background {bg!r}")
    objs = []
    for part in body.split(" and "):
        words = part.split()
        if len(words) < 4 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
            raise ValueError(f"cannot parse {part!r}")
        if words[3] == "bounces" and len(words) == 4:
            motion = "bounces"
        elif words[3] == "moves" and len(words) == 5 and words[4] in DIRECTIONS:
            motion = words[4]
        else:
            raise ValueError(f"cannot parse motion of {part!r}")
        objs.append(ObjectSpec(words[1], words[2], motion))
    return ClipSpec(tuple(objs), bg)


# ---------------------------------------------------------------------------------------------------------
# Trajectories and rendering
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Track:
    """Per-frame centre (pixels, x right / y down) and the half-extent of one object."""

    x: torch.Tensor  # [F]
    y: torch.Tensor  # [F]
    size: float


def object_track(gen: torch.Generator, obj: ObjectSpec, frames: int, height: int, width: int) -> Track:
    side = float(min(height, width))
    size = side * float(SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * torch.rand((), generator=gen))
    margin = size * 1.05
    t = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    if obj.motion == "bounces":
        # Falls from rest under gravity and bounces elastically off a floor, one to two bounces per clip.
        x0 = margin + (width - 2 * margin) * float(torch.rand((), generator=gen))
        floor = height - margin
        top = margin + (floor - margin) * float(0.0 + 0.35 * torch.rand((), generator=gen))
        drop = floor - top
        period = float(0.55 + 0.3 * torch.rand((), generator=gen))  # time of a full bounce cycle (clip = 1)
        phase = float(torch.rand((), generator=gen)) * period
        u = ((t + phase) % period) / period  # 0..1 within a cycle; 0 and 1 at the apex
        y = top + drop * (1.0 - (2.0 * u - 1.0) ** 2)  # parabola: apex at top, floor at mid-cycle
        x = torch.full_like(t, x0)
    else:
        dx, dy = DIRECTIONS[obj.motion]
        travel = side * float(TRAVEL_RANGE[0] + (TRAVEL_RANGE[1] - TRAVEL_RANGE[0]) * torch.rand((), generator=gen))
        # Start so that the whole path stays inside the frame.
        lo_x, hi_x = margin - min(0.0, dx) * travel, width - margin - max(0.0, dx) * travel
        lo_y, hi_y = margin - min(0.0, dy) * travel, height - margin - max(0.0, dy) * travel
        x_start = lo_x + (hi_x - lo_x) * float(torch.rand((), generator=gen))
        y_start = lo_y + (hi_y - lo_y) * float(torch.rand((), generator=gen))
        x = x_start + dx * travel * t
        y = y_start + dy * travel * t
    return Track(x.to(torch.float32), y.to(torch.float32), size)


def _coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, s: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] from the signed distance-like value (1-pixel linear edge)."""
    if shape == "circle":
        d = torch.sqrt(dx * dx + dy * dy) - s
    elif shape == "square":
        d = torch.maximum(dx.abs(), dy.abs()) - s * 0.9
    else:  # triangle pointing up, apex at (0, -s), base at y = +s*0.8 from x = -s to +s
        base = s * 0.8
        # Inside iff dy <= base and |dx| <= (dy + s) / 2 * (s / ((base + s) / 2)) -> edges from the apex.
        half_w = (dy + s) * (s / (base + s))
        d_side = (dx.abs() - half_w) * ((base + s) / math.hypot(base + s, s))
        d = torch.maximum(torch.maximum(dy - base, d_side), -(dy + s))
    return (0.5 - d).clamp(0.0, 1.0)


def render(specs: Sequence[ClipSpec], tracks: Sequence[Sequence[Track]], frames: int, height: int, width: int,
           gen: torch.Generator, device="cpu") -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1]."""
    B = len(specs)
    ys = torch.arange(height, dtype=torch.float32, device=device).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=device).view(1, 1, width) + 0.5
    out = torch.empty(B, 3, frames, height, width, device=device)
    for b, (spec, trs) in enumerate(zip(specs, tracks)):
        bg = torch.tensor(BACKGROUNDS[spec.background], dtype=torch.float32, device=device) / 255.0
        shade = float(0.06 + 0.12 * torch.rand((), generator=gen))
        grad = 1.0 + shade * (0.5 - ys.view(height, 1) / height)  # brighter at the top
        img = bg.view(3, 1, 1, 1) * grad.view(1, 1, height, 1)
        img = img.expand(3, frames, height, width).clone()
        for obj, tr in zip(spec.objects, trs):
            col = torch.tensor(COLOURS[obj.colour], dtype=torch.float32, device=device) / 255.0
            dx = xs - tr.x.to(device).view(frames, 1, 1)
            dy = ys - tr.y.to(device).view(frames, 1, 1)
            a = _coverage(obj.shape, dx, dy, tr.size)  # [F, H, W]
            img = img * (1.0 - a) + col.view(3, 1, 1, 1) * a
        out[b] = img.clamp(0.0, 1.0) * 2.0 - 1.0
    return out


@dataclass
class Batch:
    video: torch.Tensor  # [B, 3, F, H, W] in [-1, 1]
    captions: List[str]
    specs: List[ClipSpec]
    tracks: List[List[Track]] = field(default_factory=list)


def make_batch(gen: torch.Generator, n: int, frames: int, height: int, width: int, split: str = "train",
               device="cpu", two_object_prob: float = TWO_OBJECT_PROB) -> Batch:
    """n clips of `split`, deterministic given the generator state (a CPU torch.Generator; rendering may run on
    `device`)."""
    specs = sample_specs(gen, n, split, two_object_prob)
    tracks = [[object_track(gen, o, frames, height, width) for o in s.objects] for s in specs]
    video = render(specs, tracks, frames, height, width, gen, device)
    return Batch(video, [s.caption() for s in specs], specs, tracks)


def heldout_prompts(n: int = 20, seed: int = 1234) -> List[str]:
    """The fixed evaluation prompts: n single-object held-out captions (distinct), deterministic."""
    combos = split_combinations("heldout")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(combos), generator=g).tolist()
    return [ClipSpec((ObjectSpec(*combos[i][:3]),), combos[i][3]).caption() for i in order[:n]]


def all_caption_texts(max_two: Optional[int] = None) -> List[str]:
    """Every single-object caption (both splits) plus a deterministic sample of two-object captions: the text
    corpus of the tokenizers and text encoders."""
    caps = [ClipSpec((ObjectSpec(c, s, m),), b).caption() for c, s, m, b in all_combinations()]
    g = torch.Generator().manual_seed(99)
    caps += [s.caption() for s in sample_specs(g, max_two or 2000, "train", two_object_prob=1.0)]
    return caps


def _self_check(args) -> dict:
    heldout = split_combinations("heldout")
    train = split_combinations("train")
    assert len(heldout) + len(train) == 360 and heldout and train
    # Every attribute value and every attribute pair of one object appears in training.
    for i, j in itertools.combinations(range(4), 2):
        pairs_all = {(t[i], t[j]) for t in all_combinations()}
        pairs_train = {(t[i], t[j]) for t in train}
        assert pairs_all == pairs_train, f"attribute pair ({i}, {j}) missing from training"
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = make_batch(g1, 6, args.frames, args.height, args.width)
    b = make_batch(g2, 6, args.frames, args.height, args.width)
    assert torch.equal(a.video, b.video) and a.captions == b.captions, "not deterministic"
    for s in a.specs:
        assert clip_in_split(s, "train") and parse_caption(s.caption()) == s
    h = make_batch(torch.Generator().manual_seed(6), 6, args.frames, args.height, args.width, split="heldout")
    for s in h.specs:
        assert clip_in_split(s, "heldout") and not clip_in_split(s, "train")
    t0 = time.time()
    make_batch(torch.Generator().manual_seed(7), args.n, args.frames, args.height, args.width)
    dt = time.time() - t0
    return {"train_combinations": len(train), "heldout_combinations": len(heldout),
            "seconds_per_clip": dt / args.n, "size": [args.frames, args.height, args.width],
            "example": a.captions[0], "heldout_example": h.captions[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write sample clips (.npy uint8 [F, H, W, 3]) and captions.json here")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="train", choices=["train", "heldout"])
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args()
    if args.self_check:
        print(json.dumps(_self_check(args)))
        return
    assert args.out, "--out or --self-check"
    import numpy as np

    os.makedirs(args.out, exist_ok=True)
    batch = make_batch(torch.Generator().manual_seed(args.seed), args.n, args.frames, args.height, args.width, args.split)
    for i in range(args.n):
        v = ((batch.video[i].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        np.save(os.path.join(args.out, f"clip{i:03d}.npy"), v)
    with open(os.path.join(args.out, "captions.json"), "w") as f:
        json.dump(batch.captions, f, indent=1)
    print(json.dumps({"out": args.out, "captions": batch.captions}))


if __name__ == "__main__":
    main()
