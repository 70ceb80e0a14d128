#!/usr/bin/env bash
# Builds the real Llama-3 tokenizer.json (xz) for the tokenizer tests from the npm package
# llama3-tokenizer-js 1.2.0 (the Meta Llama 3 vocabulary is not committed to this repository).
# Usage: tools/tokenizer/fetch_llama3.sh OUT_DIR    (writes OUT_DIR/tokenizer.json.xz; a no-op when present)
# Needs node, npm (the registry) and xz; on failure it warns and exits 0, and the Llama-3 tests skip.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="$1"
[ -f "$out/tokenizer.json.xz" ] && exit 0
npm_dir="$out/npm"
mkdir -p "$npm_dir" "$out/gen"
if ! command -v node > /dev/null || ! command -v npm > /dev/null || ! command -v xz > /dev/null; then
  echo "fetch_llama3: node, npm or xz missing: the Llama-3 tokenizer tests will skip" >&2
  exit 0
fi
if ! npm install --prefix "$npm_dir" --no-audit --no-fund --no-save --ignore-scripts llama3-tokenizer-js@1.2.0 \
     > "$out/npm.log" 2>&1; then
  echo "fetch_llama3: npm install failed (see $out/npm.log): the Llama-3 tokenizer tests will skip" >&2
  exit 0
fi
if node tools/tokenizer/make_llama3.mjs "$npm_dir/node_modules/llama3-tokenizer-js" "$out/gen" > "$out/gen.log" 2>&1; then
  mv "$out/gen/tokenizer.json.xz" "$out/tokenizer.json.xz"
  # The ids must equal the committed goldens: same pinned package, same corpus.
  cmp -s "$out/gen/golden.json" tests/data/tokenizer/llama3/golden.json ||
    echo "fetch_llama3: warning: regenerated goldens differ from tests/data/tokenizer/llama3/golden.json" >&2
else
  echo "fetch_llama3: generation failed (see $out/gen.log): the Llama-3 tokenizer tests will skip" >&2
fi
exit 0
