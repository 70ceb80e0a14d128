#!/usr/bin/env bash
# Installs the Debian packages stavid needs, skipping those already present. Idempotent.
# Usage: scripts/install-deps.sh [--check]   (--check: only report what is missing, exit 1 if any)
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git xz-utils
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # model layer: weights headers, CPU GEMM
  nlohmann-json3-dev libopenblas-dev
  # model layer: text tokenizers (Unicode regexes)
  libpcre2-dev
  # server: gRPC, protobuf, Abseil, metrics
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler prometheus-cpp-dev
  # client: SHA-256 of results (OpenSSL; libgrpc++-dev pulls it in, listed because we call it)
  libssl-dev
  # media: MP4 / H.264
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libx264-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "install-deps: missing: ${missing[*]}"
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
