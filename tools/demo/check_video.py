"""The demo model's quality check through the product: stavid_server on a serving config, the `stavid` client
generating each prompt (fixed seed) into an MP4, stavid_mp4_frames decoding it with FFmpeg, and checker.py
scoring the frames against the prompt (colour, shape, motion, background). Needs numpy only (no torch).

    python3 tools/demo/check_video.py --config deploy/models/demo.json --model demo \
        --prompts-file deploy/models/demo-model/heldout.json --limit 2 --bin-dir build [--sta dense] [--min-pass 1.0]

    python3 tools/demo/check_video.py --mp4 build/demo.mp4 --prompt "a red circle moves left on a dark blue background"

Prints one JSON line per prompt and a summary line {"pass": fraction, "seconds_per_clip": ...}; exits 1 when the
fraction of passing prompts is below --min-pass, 2 on a setup error.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker as K  # noqa: E402


def start_server(server_bin, config, log_path, timeout=120.0):
    log = open(log_path, "w")
    p = subprocess.Popen([server_bin, f"--config={config}", "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"],
                         stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = open(log_path).read()
        m = re.search(r"listening on port (\d+)", text)
        if m and "stavid_server: ready" in text:
            return p, int(m.group(1))
        if p.poll() is not None:
            raise RuntimeError(f"stavid_server exited ({p.returncode}):\n{text}")
        time.sleep(0.2)
    p.kill()
    raise RuntimeError(f"stavid_server not ready after {timeout} s:\n{open(log_path).read()}")


def stage_seconds(client_stdout: str) -> dict:
    """The server's stage timings from the client's JSON event lines (the `completed` event)."""
    for text in reversed(client_stdout.splitlines()):
        try:
            event = json.loads(text)
        except ValueError:
            continue
        done = event.get("completed") if isinstance(event, dict) else None
        if isinstance(done, dict):
            return {k: round(float(v), 2) for k, v in done.items() if k.endswith("_seconds")}
    return {}


def decode_and_check(frames_bin: str, mp4: str, npy: str, prompt: str) -> dict:
    """Decodes mp4 into npy (stavid_mp4_frames) and runs the checker on it; RuntimeError when decoding fails."""
    r = subprocess.run([frames_bin, mp4, npy], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"stavid_mp4_frames failed on {mp4}: {r.stderr.strip()}")
    return K.check(np.load(npy), prompt)


def scalars(res: dict) -> dict:
    """The checker result's JSON-printable fields."""
    return {k: v for k, v in res.items() if isinstance(v, (bool, int, float, str))}


def check_mp4(mp4: str, prompts: list, frames_bin: str) -> int:
    """One existing MP4 against its prompt: a JSON line with the checker's verdict; 0 pass, 1 fail, 2 setup error."""
    if len(prompts) != 1:
        print("check_video: --mp4 takes exactly one --prompt", file=sys.stderr)
        return 2
    if not os.access(frames_bin, os.X_OK):
        print(f"check_video: {frames_bin} is missing (build first)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="stavid-check-") as work:
        try:
            res = decode_and_check(frames_bin, mp4, os.path.join(work, "frames.npy"), prompts[0])
        except RuntimeError as e:
            print(f"check_video: {e}", file=sys.stderr)
            return 2
    print(json.dumps({"prompt": prompts[0], "mp4": mp4, **scalars(res)}), flush=True)
    return 0 if res["pass"] else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="serving config (JSON); required unless --mp4")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--prompts-file", help="JSON list of captions (export.py writes heldout.json)")
    ap.add_argument("--prompt", action="append", default=[], help="a caption (repeatable)")
    ap.add_argument("--limit", type=int, default=0, help="check only the first N prompts")
    ap.add_argument("--bin-dir", default="build", help="build folder with server/, client/, server/media/")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--steps", type=int, default=0, help="0: the model's default")
    ap.add_argument("--sta", default="", help="client --sta value (dense, T,H,W[:N], strategy:NAME); empty: default")
    ap.add_argument("--work", default="", help="keep MP4s and frames here (default: a temporary folder)")
    ap.add_argument("--min-pass", type=float, default=1.0)
    ap.add_argument("--mp4", help="check this existing MP4 against the one --prompt (no server; make demo uses it)")
    ap.add_argument("--skip-if-missing", action="store_true",
                    help="exit 77 (ctest: skipped) when --prompts-file does not exist, i.e. no trained model is shipped")
    args = ap.parse_args()
    if args.skip_if_missing and args.prompts_file and not os.path.exists(args.prompts_file):
        print(f"check_video: {args.prompts_file} is missing: no trained demo model in this tree; skipped")
        return 77

    if args.mp4:
        return check_mp4(args.mp4, args.prompt, f"{args.bin_dir}/server/media/stavid_mp4_frames")
    if not args.config:
        ap.error("--config is required (unless --mp4)")
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += json.load(open(args.prompts_file))
    if args.limit:
        prompts = prompts[: args.limit]
    if not prompts:
        print("check_video: no prompts", file=sys.stderr)
        return 2
    b = args.bin_dir
    server_bin, client_bin = f"{b}/server/stavid_server", f"{b}/client/stavid"
    frames_bin = f"{b}/server/media/stavid_mp4_frames"
    for exe in (server_bin, client_bin, frames_bin):
        if not os.access(exe, os.X_OK):
            print(f"check_video: {exe} is missing (build first)", file=sys.stderr)
            return 2
    work = args.work or tempfile.mkdtemp(prefix="stavid-check-")
    os.makedirs(work, exist_ok=True)
    try:
        server, port = start_server(server_bin, args.config, os.path.join(work, "server.log"))
    except RuntimeError as e:
        print(f"check_video: {e}", file=sys.stderr)
        return 2
    results, seconds = [], []
    try:
        for i, prompt in enumerate(prompts):
            mp4, npy = os.path.join(work, f"clip{i:02d}.mp4"), os.path.join(work, f"clip{i:02d}.npy")
            cmd = [client_bin, "--server", f"127.0.0.1:{port}", "--json", "generate", "--model", args.model, "--prompt", prompt,
                   "--seed", str(args.seed), "-o", mp4]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            if args.sta:
                cmd += ["--sta", args.sta]
            t0 = time.time()
            r_gen = subprocess.run(cmd, capture_output=True, text=True)
            seconds.append(time.time() - t0)
            if r_gen.returncode != 0:
                raise RuntimeError(f"client failed ({r_gen.returncode}) on {prompt!r}: {r_gen.stderr.strip()}")
            res = decode_and_check(frames_bin, mp4, npy, prompt)
            line = {"prompt": prompt, "seconds": round(seconds[-1], 2), **stage_seconds(r_gen.stdout), **scalars(res)}
            print(json.dumps(line), flush=True)
            results.append(res)
    except RuntimeError as e:
        print(f"check_video: {e}", file=sys.stderr)
        return 2
    finally:
        server.terminate()
        server.wait(timeout=60)
    frac = sum(bool(r["pass"]) for r in results) / len(results)
    summary = {"pass": frac, "n": len(results), "seconds_per_clip": round(float(np.mean(seconds)), 2),
               **{k: sum(bool(r[k]) for r in results) / len(results) for k in ("colour", "shape", "motion", "background")}}
    print(json.dumps({"summary": summary}))
    return 0 if frac >= args.min_pass else 1


if __name__ == "__main__":
    sys.exit(main())
