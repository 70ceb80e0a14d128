"""Drops the Adam moments from a training checkpoint (a run's dit/, sta/ or vae/ folder), keeping the weights
and the step: half the bytes of a DiT checkpoint, for a device call whose carry (64 MiB with the tracked tree)
cannot hold the moments. A stage resumed from it warms its learning rate up again (train.py).

    python3 tools/demo/strip_optimizer.py tools/demo/runs/main/dit [--prefix dit]
"""

import argparse
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def strip(folder: str, prefix: str) -> tuple:
    t, meta = C.load_tensors(folder, prefix)
    kept = OrderedDict((k, v) for k, v in t.items() if not k.startswith("opt."))
    dropped = len(t) - len(kept)
    if dropped:
        C.save_tensors(folder, prefix, kept, meta)
    return len(kept), dropped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--prefix", help="the shards' prefix (default: the folder's name)")
    args = ap.parse_args()
    prefix = args.prefix or os.path.basename(os.path.normpath(args.folder))
    kept, dropped = strip(args.folder, prefix)
    print(f"{args.folder}: kept {kept} tensors, dropped {dropped} optimizer tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
