#!/usr/bin/env bash
# Copies what the GPU machine lacks into .deps/ (ignored by git, carried by the device tool):
# the nlohmann-json headers. Run on the CPU machine before a device call that builds.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/include
cp -r /usr/include/nlohmann .deps/include/
echo "staged .deps ($(du -sh .deps | cut -f1))"
# The peer attention benchmark for scripts/sta-bench.sh: a copy of shared/bench/peer_attention.py in
# .peer/ (ignored by git, carried by the device tool).
install -D -m 0644 "${STAVID_SHARED_DIR:-../shared}/bench/peer_attention.py" .peer/peer_attention.py
echo "staged .peer ($(ls .peer | tr '\n' ' '))"
# PCRE2 for the tokenizers (header + static library; the GPU machine has no Debian packages).
mkdir -p .deps/lib
# Its own folder: an include path shared with nlohmann's could shadow the GPU machine's own nlohmann.
rm -f .deps/include/pcre2.h .deps/lib/libpcre2-8.a
mkdir -p .deps/pcre2/include .deps/pcre2/lib
cp /usr/include/pcre2.h .deps/pcre2/include/
cp /usr/lib/x86_64-linux-gnu/libpcre2-8.a .deps/pcre2/lib/
echo "staged PCRE2 into .deps"
