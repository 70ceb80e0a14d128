#!/usr/bin/env bash
# `make demo`: starts stavid_server on the demo models (deploy/models/demo.json; GPU when one is
# visible, else the CPU), generates a video with the `stavid` client over gRPC, stops the server
# (SIGTERM: graceful drain) and says where the MP4 is.
#
# The demo model is the small model of the served architecture that we trained on procedural videos of
# shapes (deploy/models/demo-model, docs/demo-model.md): the video shows the prompt's object, colour,
# motion and background. After the MP4 is written, the same checker as ctest demo_quality
# (tools/demo/checker.py, through check_video.py --mp4) says whether it matches the prompt.
set -euo pipefail
build="${1:-build}"
cd "$(dirname "$0")/.."
build=$(cd "$build" && pwd)  # absolute: a bundle unpacked elsewhere (scripts/server_bundle.py) serves too
out="$build/demo.mp4"
log="$build/demo-server.log"
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
prompt="a red circle moves left on a dark blue background"
echo "stavid demo: server ready on 127.0.0.1:$port (log: $log); generating \"$prompt\""
start=$(date +%s.%N)
"$build/client/stavid" --server "127.0.0.1:$port" generate --model demo --prompt "$prompt" --seed 7 -o "$out"
seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
kill -TERM $server
wait $server || true
trap - EXIT
echo "stavid demo: wrote $out ($seconds s for the generation)"
# The checker's verdict (numpy: the Debian python3-numpy that make demo installs, hence /usr/bin/python3 first):
# informative, the MP4 is written either way.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
if "$py" -c "import numpy" 2>/dev/null; then
  if verdict=$("$py" tools/demo/check_video.py --mp4 "$out" --prompt "$prompt" --bin-dir "$build" 2>&1); then
    echo "stavid demo: the checker says the video matches the prompt: $verdict"
  else
    echo "stavid demo: the checker says the video does NOT match the prompt: $verdict"
  fi
fi
