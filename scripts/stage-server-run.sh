#!/usr/bin/env bash
# Stages the stavid_server + stavid binaries built here (CUDA on) and their Debian library closure
# for a run on the GPU machine, which has no gRPC or FFmpeg. The closure is about 58 MB as xz: with
# the ~16 MB working tree that is over one device call's 64 MiB, so it is split in two parts that go
# in two back-to-back calls (the machine keeps /tmp while it stays warm, 30 s between calls):
#   call 1: carry [".server-run/libs.part.aa", ...]  command: cp .server-run/libs.part.aa /tmp/  (plus other work)
#   call 2: carry [".server-run/libs.part.ab", ".server-run/bin.tar.xz"]  command: scripts/server-gpu-run.sh
# Usage: scripts/stage-server-run.sh [BUILD_DIR]   (output in .server-run/, ignored by .gitignore)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
out=.server-run
rm -rf "$out" && mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/libs"
cp "$build/server/stavid_server" "$build/client/stavid" "$tmp/bin/"
# Everything the binaries load except glibc and the CUDA libraries (and NCCL) the GPU machine has.
ldd "$tmp/bin/stavid_server" "$tmp/bin/stavid" | awk '/=>/ {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so' |
  while read -r lib; do cp -L "$lib" "$tmp/libs/"; done
tar cJf "$out/bin.tar.xz" -C "$tmp" bin
tar cf - -C "$tmp" libs | xz -6 -T0 > "$tmp/libs.tar.xz"
split -b 40000000 "$tmp/libs.tar.xz" "$out/libs.part."
ls -l "$out"
