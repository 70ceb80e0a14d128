#!/usr/bin/env bash
# Copies what the GPU machine lacks into .deps/ (ignored by git, carried by the device tool):
# the nlohmann-json headers. Run on the CPU machine before a device call that builds.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/include
cp -r /usr/include/nlohmann .deps/include/
echo "staged .deps ($(du -sh .deps | cut -f1))"
