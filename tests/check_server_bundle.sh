#!/usr/bin/env bash
# ctest server_bundle: scripts/server_bundle.py packs test_mp4 (H.264 encode with x264, MP4 mux, decode:
# every FFmpeg path the server uses) with its Debian libraries and FFmpeg's unused dependencies stubbed
# (scripts/stub_so.py), then runs it from the bundle: the stubs load (BIND_NOW: every symbol and symbol
# version resolves) and nothing calls into them.
#   tests/check_server_bundle.sh BUILD_DIR PYTHON3
set -euo pipefail
build=$1 py=${2:-python3}
src=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$py" "$src/scripts/server_bundle.py" --dir "$dir/b" "$build" "$build/tests/test_mp4"
stubs=$(cd "$dir/b/lib" && for f in *.so*; do readelf -d "$f" | grep -q "(NEEDED)" || echo "$f"; done | wc -l)
[ "$stubs" -gt 0 ] || { echo "server_bundle: no stub in the bundle"; exit 1; }
# Every library test_mp4 loads comes from the bundle, except the ones the GPU machine has.
outside=$(LD_LIBRARY_PATH="$dir/b/lib" ldd "$dir/b/tests/test_mp4" | awk '$3 ~ /^\// {print $3}' |
          grep -v "^$dir/b/lib/" | grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt)\.so' |
          grep -v '^/usr/local/cuda' || true)
[ -z "$outside" ] || { echo "server_bundle: loaded from outside the bundle: $outside"; exit 1; }
LD_LIBRARY_PATH="$dir/b/lib" "$dir/b/tests/test_mp4" --gtest_brief=1
echo "server_bundle: test_mp4 passes from the bundle ($stubs stubbed libraries)"
