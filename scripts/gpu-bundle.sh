#!/usr/bin/env bash
# Builds the CUDA tests and benches HERE (no GPU needed; the device machine has no OpenBLAS) and packs
# them with the libraries the device lacks into .gpubin/bundle.tar.xz (git-ignored; about 8 MB), so a
# device call spends its minutes running, not compiling (docs/gpu.md):
#
#   scripts/gpu-bundle.sh [target ...]          # default: test_sta bench_sta test_dit
#   device call, carry [".gpubin"]:
#     mkdir -p /tmp/g && tar xJf .gpubin/bundle.tar.xz -C /tmp/g && export LD_LIBRARY_PATH=/tmp/g/lib
#     /tmp/g/bin/test_sta ...
#
# The binaries look for their test data under this checkout's path, which the device's copy shares.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${STAVID_GPU_BUILD_DIR:-build-gpu}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(test_sta bench_sta test_dit)
[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTAVID_CUDA=ON \
  -DSTAVID_BUILD_SERVER=OFF -DSTAVID_CUDA_ARCHS=90a
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for t in "${targets[@]}"; do
  f=$(find "$build" -type f -name "$t" -perm -u+x -print -quit)
  [ -n "$f" ] || { echo "gpu-bundle: no binary for target $t" >&2; exit 1; }
  cp "$f" "$stage/bin/"
done
# OpenBLAS and its Fortran runtime: everything else the binaries link (CUDA, libstdc++, glibc) is there.
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  path=$(ldd "$stage"/bin/* | awk -v l="$lib" '$1 == l && !seen { print $3; seen = 1 }')
  [ -n "$path" ] && cp -L "$path" "$stage/lib/"
done
mkdir -p .gpubin
tar cJf .gpubin/bundle.tar.xz -C "$stage" bin lib
ls -la .gpubin/bundle.tar.xz
