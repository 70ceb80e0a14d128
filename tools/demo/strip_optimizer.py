"""Drops the Adam moments from a training checkpoint (a run's dit/, sta/ or vae/ folder), keeping the weights
and the step: half the bytes of a DiT checkpoint, for a device call whose carry (64 MiB with the tracked tree)
cannot hold the moments. A stage resumed from it warms its learning rate up again (train.py). --half also
stores the weights as fp16 (half again: a DiT checkpoint 17 -> 8.5 MB, so the dense teacher and an STA student
travel together); stages load every checkpoint as fp32, so training resumes from the fp16-rounded weights.

    python3 tools/demo/strip_optimizer.py tools/demo/runs/main/dit [--prefix dit] [--half]
"""

import argparse
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def strip(folder: str, prefix: str, half: bool = False) -> tuple:
    t, meta = C.load_tensors(folder, prefix)
    kept = OrderedDict((k, v.half() if half and v.is_floating_point() else v)
                       for k, v in t.items() if not k.startswith("opt."))
    dropped = len(t) - len(kept)
    if dropped or half:
        C.save_tensors(folder, prefix, kept, meta)
    return len(kept), dropped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--prefix", help="the shards' prefix (default: the folder's name)")
    ap.add_argument("--half", action="store_true", help="store the weights as fp16")
    args = ap.parse_args()
    prefix = args.prefix or os.path.basename(os.path.normpath(args.folder))
    kept, dropped = strip(args.folder, prefix, args.half)
    print(f"{args.folder}: kept {kept} tensors, dropped {dropped} optimizer tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
