#!/usr/bin/env bash
# Builds the CUDA tests and benches HERE (no GPU needed; the device machine has no OpenBLAS) and packs
# them with the libraries the device lacks into .gpubin/bundle.tar.xz (git-ignored; about 10 MB), so a
# device call spends its minutes running, not compiling (docs/gpu.md):
#
#   scripts/gpu-bundle.sh [target ...]          # default: test_sta bench_sta test_dit
#   AB_REF=<git ref> scripts/gpu-bundle.sh ...  # also bin/bench_sta_ref: bench_sta built at that ref
#   AB_REF=<ref>,<ref2> ...                     # and bin/bench_sta_ref2 (each ref about +0.9 MB)
#   device call, carry [".gpubin"]:
#     mkdir -p /tmp/g && tar xJf .gpubin/bundle.tar.xz -C /tmp/g && export LD_LIBRARY_PATH=/tmp/g/lib
#     /tmp/g/bin/test_sta ...
#
# AB_REF: an A/B of two versions of the kernels in ONE device call (one machine state; two sessions'
# timings differ by a few percent). The ref is checked out in a git worktree of this repository
# (AB_WORKTREE, default ../ab-worktree beside this checkout; kept, so the next build there is
# incremental; several refs take turns in it) and its bench_sta built in the worktree's own
# build-gpu with the flags below. /tmp/g/refs.txt says which commits the binaries are (bench_sta:
# this checkout, with the files it has changed under kernels/ model/ bench/ tests/). A ref whose
# build fails stops the script: report it, do not patch the old code.
#
# The binaries look for their test data under this checkout's path, which the device's copy shares.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${STAVID_GPU_BUILD_DIR:-build-gpu}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(test_sta bench_sta test_dit)
cmake_flags=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DSTAVID_CUDA=ON -DSTAVID_BUILD_SERVER=OFF -DSTAVID_CUDA_ARCHS=90a)
[ -f "$build/build.ninja" ] || cmake -S . -B "$build" "${cmake_flags[@]}"
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for t in "${targets[@]}"; do
  f=$(find "$build" -type f -name "$t" -perm -u+x -print -quit)
  [ -n "$f" ] || { echo "gpu-bundle: no binary for target $t" >&2; exit 1; }
  cp "$f" "$stage/bin/"
done
# Uncommitted edits to what the binaries are built from (others, e.g. tools/, do not count).
changed=$(git status --porcelain --untracked-files=no -- kernels model bench tests CMakeLists.txt | awk '{print $2}' | xargs)
echo "bench_sta: $(git log -1 --format='%h %s' HEAD)${changed:+ + uncommitted changes to $changed}" >"$stage/refs.txt"

# AB_REF: one ref, or several separated by commas or spaces (bench_sta_ref, bench_sta_ref2, ...).
refs=()
[ -z "${AB_REF:-}" ] || read -r -a refs <<<"${AB_REF//,/ }"
wt=${AB_WORKTREE:-$(cd .. && pwd)/ab-worktree}
for i in "${!refs[@]}"; do
  ref=${refs[$i]}
  name=bench_sta_ref
  [ "$i" -eq 0 ] || name=bench_sta_ref$((i + 1))
  sha=$(git rev-parse --verify "${ref}^{commit}")
  if [ -e "$wt/.git" ]; then
    git -C "$wt" checkout -q --detach "$sha"  # refuses (and stops us) if someone edited it
  else
    git worktree add -q --detach "$wt" "$sha"
  fi
  [ -f "$wt/build-gpu/build.ninja" ] || cmake -S "$wt" -B "$wt/build-gpu" "${cmake_flags[@]}"
  cmake --build "$wt/build-gpu" -j"$(nproc)" --target bench_sta ||
    { echo "gpu-bundle: bench_sta does not build at $ref ($sha)" >&2; exit 1; }
  f=$(find "$wt/build-gpu" -type f -name bench_sta -perm -u+x -print -quit)
  [ -n "$f" ] || { echo "gpu-bundle: no bench_sta binary at $ref" >&2; exit 1; }
  cp "$f" "$stage/bin/$name"  # now: the next ref's checkout rebuilds it
  echo "$name: $(git log -1 --format='%h %s' "$sha") (AB_REF $ref)" >>"$stage/refs.txt"
done
# OpenBLAS and its Fortran runtime: everything else the binaries link (CUDA, libstdc++, glibc) is there.
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  path=$(ldd "$stage"/bin/* | awk -v l="$lib" '$1 == l && !seen { print $3; seen = 1 }')
  [ -n "$path" ] && cp -L "$path" "$stage/lib/"
done
mkdir -p .gpubin
tar cJf .gpubin/bundle.tar.xz -C "$stage" bin lib refs.txt
cat "$stage/refs.txt"
ls -la .gpubin/bundle.tar.xz
