#!/usr/bin/env bash
# Lays out what the runtime image needs (deploy/docker/Dockerfile, build stage) under STAGING:
#   STAGING/opt/stavid/bin/{stavid_server,stavid}      the two binaries, stripped
#   STAGING/opt/stavid/deploy/models/ + tests/data/     the demo models (random test weights), when BAKE_DEMO=1
#   STAGING/runtime-packages.txt                        the packages that own the shared libraries the
#                                                       binaries name (DT_NEEDED, ldd, dpkg -S), one a
#                                                       line; the runtime stage installs those (apt
#                                                       brings their dependencies)
# CUDA libraries are left out of the list: the runtime base image brings them, and the driver
# (libcuda.so.1) comes from the host through the NVIDIA container toolkit.
# Usage: deploy/docker/stage-runtime.sh BUILD_DIR STAGING [BAKE_DEMO=1]
set -euo pipefail
build="${1:?usage: stage-runtime.sh BUILD_DIR STAGING [BAKE_DEMO]}"
staging="${2:?usage: stage-runtime.sh BUILD_DIR STAGING [BAKE_DEMO]}"
bake_demo="${3:-1}"
root="$(cd "$(dirname "$0")/../.." && pwd)"

binaries=("$build/server/stavid_server" "$build/client/stavid")
for b in "${binaries[@]}"; do
  [ -x "$b" ] || { echo "stage-runtime: $b is missing (build the stavid_server and stavid targets)" >&2; exit 1; }
done

mkdir -p "$staging/opt/stavid/bin"
for b in "${binaries[@]}"; do
  install -m 0755 "$b" "$staging/opt/stavid/bin/"
  strip --strip-unneeded "$staging/opt/stavid/bin/$(basename "$b")" 2>/dev/null || true
done

# Shared libraries the binaries name (DT_NEEDED) -> owning packages; apt brings their own
# dependencies. A library ldd cannot find is an error, except the driver's libcuda.so.1, which
# exists only on a GPU host.
resolved=$(ldd "${binaries[@]}" | awk '$2 == "=>" { print $1 " " $3 }' | sort -u)
missing=$(echo "$resolved" | awk '$2 == "not" && $1 !~ /^libcuda\.so/ { print $1 }')
if [ -n "$missing" ]; then
  echo "stage-runtime: unresolved shared libraries: $missing" >&2
  exit 1
fi
needed=$(for b in "${binaries[@]}"; do readelf -d "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; done | sort -u)
# One dpkg -S for every spelling of every path (/lib is /usr/lib on merged-/usr systems, and dpkg
# may know either spelling; the real file may be behind an alternatives link).
declare -A path_of
candidates=()
for name in $needed; do
  case "$name" in libcuda.so*|libcudart.so*|libcublas*|libnvrtc*|libnvJitLink*) continue ;; esac
  path=$(echo "$resolved" | awk -v n="$name" '$1 == n { print $2 }')
  [ -n "$path" ] || { echo "stage-runtime: ldd does not resolve $name" >&2; exit 1; }
  case "$path" in /usr/local/cuda*) continue ;; esac
  path_of[$name]="$path"
  for c in "$path" "$(readlink -f "$path")"; do candidates+=("$c" "${c#/usr}" "/usr${c}"); done
done
owners=$(dpkg -S "${candidates[@]}" 2>/dev/null || true)
: > "$staging/runtime-packages.txt.tmp"
for name in "${!path_of[@]}"; do
  path="${path_of[$name]}"
  owner=""
  for c in "$path" "$(readlink -f "$path")"; do
    for spelling in "$c" "${c#/usr}" "/usr${c}"; do
      owner=$(echo "$owners" | awk -v f="$spelling" '{ p = $0; sub(/^[^:]*(:[a-z0-9]+)?: /, "", p); split($0, a, ":"); if (p == f) { print a[1]; exit } }')
      [ -n "$owner" ] && break 2
    done
  done
  if [ -z "$owner" ]; then
    echo "stage-runtime: no package owns $path ($name)" >&2
    exit 1
  fi
  echo "$owner" >> "$staging/runtime-packages.txt.tmp"
done
sort -u "$staging/runtime-packages.txt.tmp" > "$staging/runtime-packages.txt"
rm -f "$staging/runtime-packages.txt.tmp"
if grep -E -- '-dev$' "$staging/runtime-packages.txt" >&2; then
  echo "stage-runtime: a -dev package owns a runtime library (above); link against the shared library package" >&2
  exit 1
fi

if [ "$bake_demo" = 1 ]; then
  # The demo config resolves ../../tests/data/... against deploy/models: keep that layout.
  mkdir -p "$staging/opt/stavid/deploy" "$staging/opt/stavid/tests/data/dit" "$staging/opt/stavid/tests/data/vae"
  cp -r "$root/deploy/models" "$staging/opt/stavid/deploy/"
  for m in dit/small dit/tiny vae/small vae/tiny; do
    cp -r "$root/tests/data/$m" "$staging/opt/stavid/tests/data/$m"
  done
fi
echo "stage-runtime: staged $(ls "$staging/opt/stavid/bin" | tr '\n' ' ')and $(wc -l < "$staging/runtime-packages.txt") runtime packages under $staging"
