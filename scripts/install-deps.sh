#!/usr/bin/env bash
# Installs the Debian packages stavid needs, skipping those already present, and the npm packages of
# the deployment validation (tests/deploy/package-lock.json into tests/deploy/node_modules). Idempotent.
# Usage: scripts/install-deps.sh [--check] [--build-only]
#   --check       only report what is missing, exit 1 if any
#   --build-only  only what building stavid_server and stavid needs (deploy/docker/Dockerfile)
set -euo pipefail

check=0
build_only=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --build-only) build_only=1 ;;
    *) echo "install-deps: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

build_packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git xz-utils
  # model layer: weights headers, CPU GEMM
  nlohmann-json3-dev libopenblas-dev
  # model layer: text tokenizers (Unicode regexes)
  libpcre2-dev
  # server: gRPC, protobuf, Abseil, metrics; OpenSSL (SHA-256, and the CLI makes the TLS test's certificate)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler prometheus-cpp-dev libssl-dev openssl
  # media: MP4 / H.264
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libx264-dev
)
test_packages=(
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # tests: a real Prometheus server scrapes stavid_server (test_service_process, tests/deploy), promtool
  prometheus
  # tests/deploy: YAML parsing and lint, `docker-compose config`, Node.js for the Kubernetes schemas
  python3 python3-yaml yamllint docker-compose
  # tools/demo/check_video.py + checker.py (the demo model's quality check in ctest demo_quality)
  python3-numpy
)
packages=("${build_packages[@]}")
if [ "$build_only" = 0 ]; then
  packages+=("${test_packages[@]}")
  # Node.js/npm: this machine image ships them; install Debian's only where they are absent.
  command -v node > /dev/null || packages+=(nodejs)
  command -v npm > /dev/null || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

root="$(cd "$(dirname "$0")/.." && pwd)"
npm_dir="$root/tests/deploy"
npm_stamp="$npm_dir/node_modules/.stavid-package-lock.json"
npm_missing=0
if [ "$build_only" = 0 ] && ! cmp -s "$npm_dir/package-lock.json" "$npm_stamp"; then npm_missing=1; fi

if [ ${#missing[@]} -eq 0 ] && [ "$npm_missing" = 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [ "$check" = 1 ]; then
  [ ${#missing[@]} -eq 0 ] || echo "install-deps: missing: ${missing[*]}"
  [ "$npm_missing" = 0 ] || echo "install-deps: missing: npm packages of tests/deploy"
  exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$npm_missing" = 1 ]; then
  echo "install-deps: npm ci in tests/deploy (kubernetes-models, @kubernetes-models/prometheus-operator)"
  (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$npm_dir/package-lock.json" "$npm_stamp"
fi
echo "install-deps: done"
