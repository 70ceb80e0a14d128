#!/usr/bin/env bash
# `make demo`: starts stavid_server on the demo models (deploy/models/demo.json; GPU when one is
# visible, else the CPU), generates a video with the `stavid` client over gRPC, stops the server
# (SIGTERM: graceful drain) and says where the MP4 is.
#
# The demo model is still the small RANDOM-weight fixture of tests/data (the trained demo model is
# issue 8): the whole service and pipeline are real (text embeddings -> DiT with STA -> causal 3-D
# VAE -> H.264), but the picture is structured noise, not the prompt.
set -euo pipefail
build="${1:-build}"
cd "$(dirname "$0")/.."
out="$PWD/$build/demo.mp4"
log="$PWD/$build/demo-server.log"
"$build/server/stavid_server" --config=deploy/models/demo.json --listen=127.0.0.1:0 --metrics-listen=127.0.0.1:0 \
  > "$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/^stavid_server: listening on port \([0-9]*\),.*/\1/p' "$log")
  grep -q "^stavid_server: ready" "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
grep -q "^stavid_server: ready" "$log" || { echo "stavid demo: the server did not become ready"; cat "$log"; exit 1; }
echo "stavid demo: server ready on 127.0.0.1:$port (log: $log); the demo model has untrained weights: expect noise."
"$build/client/stavid" --server "127.0.0.1:$port" generate --model demo --prompt "a red circle moves left on a dark blue background" \
  --seed 7 -o "$out"
kill -TERM $server
wait $server || true
trap - EXIT
echo "stavid demo: wrote $out"
