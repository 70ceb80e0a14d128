#!/usr/bin/env python3
"""Packs binaries built here with the Debian libraries the GPU machine lacks, small enough to travel with the
tracked tree (a device call carries 64 MiB in all): FFmpeg's codec, hardware and image dependencies that the
server's H.264 encode, MP4 mux and decode paths never call are replaced by stubs (scripts/stub_so.py), which
drops their own dependency trees too (ICU, cairo, glib, x265, codec2, ...).

    scripts/server_bundle.py OUT.tar.xz BUILD_DIR BINARY [BINARY ...]
    scripts/server_bundle.py --dir DIR BUILD_DIR BINARY [BINARY ...]   (unpacked, for tests)

Binaries keep their paths under BUILD_DIR (server/stavid_server, client/stavid, ...), so the unpacked folder
serves as a build folder: mkdir -p /tmp/s && tar xJf OUT.tar.xz -C /tmp/s &&
LD_LIBRARY_PATH=/tmp/s/lib scripts/demo.sh /tmp/s
Libraries the GPU machine has (glibc, libstdc++, libgcc_s) and CUDA's own stay out.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM = re.compile(r"^(ld-linux.*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s)\.so")
FFMPEG = re.compile(r"^lib(avcodec|avformat|avutil|swscale|swresample|avfilter|avdevice|postproc)\.so")
# What FFmpeg's libraries may keep for real: each other, x264 (the H.264 encoder) and the compressors.
FFMPEG_KEEP = re.compile(r"^lib(avcodec|avformat|avutil|swscale|swresample|x264|z|lzma|bz2)\.so")


def needed(path):
    out = subprocess.run(["readelf", "-d", "-W", path], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out)


def resolved(binaries):
    """soname -> path, as the loader resolves them here."""
    paths = {}
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True, check=True).stdout
        for m in re.finditer(r"^\s*(\S+) => (\S+) ", out, re.M):
            paths[m.group(1)] = m.group(2)
    return paths


def plan(binaries):
    paths = resolved(binaries)
    real, stubs, todo = set(), set(), []
    for b in binaries:
        todo += needed(b)
    while todo:
        so = todo.pop()
        if so in real or SYSTEM.match(so) or paths.get(so, "").startswith("/usr/local/cuda"):
            continue
        if so not in paths:
            raise SystemExit(f"server_bundle: {so} does not resolve here")
        real.add(so)
        cut = FFMPEG.match(so)
        for dep in needed(paths[so]):
            if cut and not FFMPEG_KEEP.match(dep) and not SYSTEM.match(dep):
                stubs.add(dep)
            else:
                todo.append(dep)
    return paths, real, stubs - real


def pack(dest, root, binaries):
    """Binaries (under root), their real libraries and the stubs into the folder dest; returns the counts."""
    paths, real, stubs = plan(binaries)
    os.makedirs(os.path.join(dest, "lib"), exist_ok=True)
    tops = {"lib"}
    for b in binaries:
        rel = os.path.relpath(b, root)
        if rel.startswith(".."):
            raise SystemExit(f"server_bundle: {b} is not under {root}")
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(b, os.path.join(dest, rel))
        tops.add(rel.split(os.sep)[0])
    for so in sorted(real):
        shutil.copy2(paths[so], os.path.join(dest, "lib", so))  # follows the symlink: the file under its soname
    for so in sorted(stubs):
        subprocess.run([sys.executable, os.path.join(HERE, "stub_so.py"), paths[so], os.path.join(dest, "lib")],
                       check=True, capture_output=True)
    return tops, len(real), len(stubs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="write the bundle unpacked into this folder (no tarball)")
    ap.add_argument("paths", nargs="+", help="[OUT.tar.xz] BUILD_DIR BINARY [BINARY ...]")
    args = ap.parse_args()
    paths = args.paths if args.dir else args.paths[1:]
    if len(paths) < 2:
        ap.error("expected [OUT.tar.xz] BUILD_DIR BINARY [BINARY ...]")
    root, binaries = paths[0], paths[1:]
    if args.dir:
        _, n_real, n_stubs = pack(args.dir, root, binaries)
        print(f"{args.dir}: {len(binaries)} binaries, {n_real} libraries, {n_stubs} stubs")
        return 0
    out = args.paths[0]
    with tempfile.TemporaryDirectory() as tmp:
        tops, n_real, n_stubs = pack(tmp, root, binaries)
        subprocess.run(["tar", "-C", tmp, "-cJf", os.path.abspath(out), *sorted(tops)], check=True,
                       env=dict(os.environ, XZ_OPT="-9 -T2"))
    print(f"{out}: {len(binaries)} binaries, {n_real} libraries, {n_stubs} stubs, {os.path.getsize(out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
