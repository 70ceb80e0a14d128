#!/usr/bin/env bash
# Regenerates the tokenizer fixtures in tests/data/tokenizer/ and the Unicode tables in model/text/tokenizer.cc.
# Usage: tools/tokenizer/regen.sh [--check]   (--check: regenerate into a scratch folder and compare, exit 1
#                                              if anything checked in differs)
# Needs node (Debian's nodejs), xz, and once the npm registry: llama3-tokenizer-js 1.2.0 goes into a scratch
# folder outside the repository ($STAVID_TOKENIZER_NPM_DIR, default ${TMPDIR:-/tmp}/stavid-tokenizer-npm).
# Nothing here runs at build or test time. The Llama-3 vocabulary is not committed (Meta's license):
# tools/tokenizer/fetch_llama3.sh builds it into the build tree for the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
npm_dir="${STAVID_TOKENIZER_NPM_DIR:-${TMPDIR:-/tmp}/stavid-tokenizer-npm}"
pkg="$npm_dir/node_modules/llama3-tokenizer-js"
if [ ! -f "$pkg/package.json" ]; then
  mkdir -p "$npm_dir"
  npm install --prefix "$npm_dir" --no-audit --no-fund --no-save --ignore-scripts llama3-tokenizer-js@1.2.0
fi

if [ "${1:-}" != "--check" ]; then
  node tools/tokenizer/gen_unicode_tables.mjs model/text/tokenizer.cc
  node tools/tokenizer/make_small.mjs tests/data/tokenizer
  node tools/tokenizer/make_llama3.mjs "$pkg" tests/data/tokenizer/llama3
  rm -f tests/data/tokenizer/llama3/tokenizer.json.xz  # not committed: fetch_llama3.sh builds it
  exit 0
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp model/text/tokenizer.cc "$scratch/tokenizer.cc"
node tools/tokenizer/gen_unicode_tables.mjs "$scratch/tokenizer.cc"
node tools/tokenizer/make_small.mjs "$scratch"
node tools/tokenizer/make_llama3.mjs "$pkg" "$scratch/llama3"
status=0
compare() {  # compare NAME CHECKED_IN REGENERATED
  if cmp -s "$2" "$3"; then echo "same: $1"; else echo "DIFFERS: $1"; status=1; fi
}
compare model/text/tokenizer.cc model/text/tokenizer.cc "$scratch/tokenizer.cc"
for f in small_bpe/tokenizer.json small_bpe/golden.json clip_tiny/tokenizer.json clip_tiny/golden.json llama3/golden.json; do
  compare "tests/data/tokenizer/$f" "tests/data/tokenizer/$f" "$scratch/$f"
done
exit $status
