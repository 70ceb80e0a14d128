"""End-to-end smoke test of the demo-model tooling at toy sizes (ctest `demo_smoke`, about a minute on 2 CPU
cores): dataset self-check, every training stage for a few steps (text, vae, dit, sta), resume of a stage,
export, the C++ parity check (tests/demo_parity.cc) and, when given, stavid_server loading the exported model
from a generated serving config and reporting ready.

Exit codes: 0 pass, 1 fail, 77 skipped (no Python with torch; ctest SKIP_RETURN_CODE).
Usage: python3 tools/demo/smoke_test.py --parity-bin build/tests/demo_parity [--server-bin build/server/stavid_server]
       [--work DIR]
"""

import os
import subprocess
import sys


def _reexec_with_torch():
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    for py in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(py) and os.path.realpath(py) != os.path.realpath(sys.executable):
            if subprocess.run([py, "-c", "import torch, numpy"], capture_output=True).returncode == 0:
                os.execv(py, [py] + sys.argv)
    print("demo_smoke: SKIP (no python3 with torch and numpy)")
    sys.exit(77)


_reexec_with_torch()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(cmd, **kw):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
        raise SystemExit(f"demo_smoke: FAILED: {' '.join(cmd)} (exit {r.returncode})")
    print(f"demo_smoke: ok {time.time() - t0:5.1f} s  {' '.join(os.path.basename(c) if i < 2 else c for i, c in enumerate(cmd))}",
          flush=True)
    return r.stdout


def server_ready(server_bin, config, timeout=60.0) -> str:
    log = config + ".log"
    with open(log, "w") as f:
        p = subprocess.Popen([server_bin, f"--config={config}", "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"],
                             stdout=f, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while time.time() - t0 < timeout:
            text = open(log).read()
            if "stavid_server: ready" in text:
                return text
            if p.poll() is not None:
                raise SystemExit(f"demo_smoke: FAILED: stavid_server exited {p.returncode}:\n{text}")
            time.sleep(0.2)
        raise SystemExit(f"demo_smoke: FAILED: stavid_server not ready after {timeout} s:\n{open(log).read()}")
    finally:
        p.terminate()
        p.wait(timeout=30)


def check_train_run():
    """The training VAE's fused ops (common.TrainRun) against the reference decode state, on the demo's VAE
    layout: the encoder and the decoder, forward, to float rounding."""
    sys.path.insert(0, HERE)
    import torch
    import common as C
    import hunyuan_vae as hv
    vae = C.VAE(C.Spec().vae_config(), seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 9, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        fast = (vae.encode(x)[0], vae.decode_raw(torch.randn(1, 16, 3, 4, 4, generator=g)))
        C.TrainRun, saved = hv.DecodeRun, C.TrainRun  # the same calls through the reference state
        try:
            g.manual_seed(0)
            x = torch.rand(1, 3, 9, 32, 32, generator=g) * 2 - 1
            ref = (vae.encode(x)[0], vae.decode_raw(torch.randn(1, 16, 3, 4, 4, generator=g)))
        finally:
            C.TrainRun = saved
    for a, b, what in zip(fast, ref, ("encode", "decode")):
        err = float((a - b).abs().max() / b.abs().max())
        assert err < 1e-5, f"TrainRun {what} differs from the reference by {err:.2e} (relative)"
    print("demo_smoke: ok TrainRun matches the reference decode state")


def check_fused_dit():
    """The training DiT's fused ops (common.FusedTransformer) against the reference transformer on the demo's
    DiT layout: output and every weight's gradient, fp32, to float rounding. Random weights with the output
    layer re-drawn (the initializer zeroes it, which would make the output trivially equal)."""
    sys.path.insert(0, HERE)
    import torch
    import common as C
    cfg = C.Spec().dit_config()
    g = torch.Generator().manual_seed(1)
    w = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in C.DiT(cfg, seed=2).w.dict().items()}
    B = 2
    x = torch.randn(B, cfg.in_channels, 3, 8, 8, generator=g)
    t, guid = torch.tensor([500.0, 90.0]), torch.full((B,), 6000.0)
    text = torch.randn(B, 32, cfg.text_embed_dim, generator=g)
    pooled = torch.randn(B, cfg.pooled_projection_dim, generator=g)
    mask = torch.ones(B, 32)
    mask[0, 20:], mask[1, 7:] = 0, 0
    res = []
    for fused in (False, True):
        m = C.DiT(cfg, fused=fused)
        m.w.load(w)
        v = m(x, t, text, mask, pooled, guid, C.Attention("dense", impl="math"))
        v.pow(2).mean().backward()
        res.append((v.detach(), {k: p.grad for k, p in m.w.dict().items()}))
    (v0, g0), (v1, g1) = res
    err = float((v0 - v1).abs().max() / v0.abs().max())
    assert err < 1e-5, f"FusedTransformer output differs from the reference by {err:.2e} (relative)"
    # Gradients relative to the largest gradient of the same tensor, over tensors whose gradient is not ~0
    # (the refiner's key bias has none: softmax ignores a per-query constant).
    worst = max(float((g0[k] - g1[k]).abs().max() / g0[k].abs().max()) for k in g0 if g0[k].abs().max() > 1e-6)
    assert worst < 1e-4, f"FusedTransformer gradients differ from the reference by {worst:.2e} (relative)"
    print(f"demo_smoke: ok FusedTransformer matches the reference DiT (output {err:.1e}, gradients {worst:.1e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parity-bin", required=True)
    ap.add_argument("--server-bin")
    ap.add_argument("--work", default="/tmp/stavid-demo-smoke")
    args = ap.parse_args()
    py = sys.executable
    env = dict(os.environ, STAVID_DEMO_THREADS=os.environ.get("STAVID_DEMO_THREADS", "2"))
    shutil.rmtree(args.work, ignore_errors=True)
    run, model = os.path.join(args.work, "run"), os.path.join(args.work, "model")
    t0 = time.time()
    check_train_run()
    check_fused_dit()
    sh([py, os.path.join(HERE, "dataset.py"), "--self-check", "--frames", "9", "--height", "32", "--width", "32",
        "--n", "4"], env=env)
    tr = os.path.join(HERE, "train.py")
    sh([py, tr, "text", "--run", run, "--toy", "--steps", "20"], env=env)
    sh([py, tr, "vae", "--run", run, "--toy", "--steps", "6"], env=env)
    sh([py, tr, "vae", "--run", run, "--toy", "--steps", "8"], env=env)  # resumes at step 6
    with open(os.path.join(run, "vae", "state.json")) as f:
        assert json.load(f)["step"] == 8, "the VAE stage did not resume"
    sh([py, tr, "dit", "--run", run, "--toy", "--steps", "6"], env=env)
    # A checkpoint carried without its Adam moments (strip_optimizer.py) resumes with the weights and the step.
    sh([py, os.path.join(HERE, "strip_optimizer.py"), os.path.join(run, "dit")], env=env)
    sys.path.insert(0, HERE)
    import common as C
    t, meta = C.load_tensors(os.path.join(run, "dit"), "dit")
    assert meta["step"] == 6 and t and not any(k.startswith("opt.") for k in t), "strip_optimizer kept moments"
    sh([py, tr, "dit", "--run", run, "--toy", "--steps", "8"], env=env)
    with open(os.path.join(run, "dit", "state.json")) as f:
        assert json.load(f)["step"] == 8, "the DiT stage did not resume from the stripped checkpoint"
    sh([py, tr, "sta", "--run", run, "--toy", "--steps", "3"], env=env)
    # --half: the weights as fp16 (a teacher and a student travel together); the stage resumes from them,
    # here with the distillation-weighted loss.
    sh([py, os.path.join(HERE, "strip_optimizer.py"), os.path.join(run, "sta"), "--half"], env=env)
    t, meta = C.load_tensors(os.path.join(run, "sta"), "sta")
    assert meta["step"] == 3 and all(v.dtype == C.torch.float16 for v in t.values()), "strip_optimizer --half"
    sh([py, tr, "sta", "--run", run, "--toy", "--steps", "4", "--data-weight", "0.2", "--distill-weight", "1"], env=env)
    with open(os.path.join(run, "sta", "state.json")) as f:
        assert json.load(f)["step"] == 4, "the STA stage did not resume from the fp16 checkpoint"
    info = json.loads(sh([py, os.path.join(HERE, "export.py"), "--run", run, "--out", model], env=env))
    assert info["dit_checkpoint"] == "sta"
    rep = json.loads(sh([py, os.path.join(HERE, "parity.py"), "--model", model, "--parity-bin", args.parity_bin],
                        env=env).strip().splitlines()[-1])
    assert rep["ok"], rep
    print("demo_smoke: parity " + json.dumps(rep["stages"]))
    if args.server_bin:
        text = server_ready(args.server_bin, os.path.join(model, "serving.json"))
        print("demo_smoke: stavid_server loaded the export: " + text.strip().splitlines()[-1])
    print(f"demo_smoke: PASS in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
