#!/usr/bin/env bash
# On the GPU machine (second call of scripts/stage-server-run.sh's plan): unpacks the staged
# binaries and libraries, starts stavid_server on deploy/models/demo.json (GPU worker), checks
# readiness with `stavid health`, runs two Generates through the `stavid` client, scrapes /metrics,
# and drains the server with SIGTERM. Outputs (MP4s, logs, metrics) in $OUT.
set -u
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
test -f /tmp/libs.part.aa || { echo "server-gpu-run: /tmp/libs.part.aa is missing (the first call's machine was given back)"; exit 3; }
cat /tmp/libs.part.aa .server-run/libs.part.ab | xz -d | tar x -C /tmp && tar xJf .server-run/bin.tar.xz -C /tmp || exit 4
export LD_LIBRARY_PATH=/tmp/libs:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib
/tmp/bin/stavid_server --config=deploy/models/demo.json --listen=127.0.0.1:50051 --metrics-listen=127.0.0.1:9464 \
  > "$out/server.log" 2>&1 &
srv=$!
for _ in $(seq 1 300); do grep -q "ready" "$out/server.log" && break; kill -0 $srv 2>/dev/null || break; sleep 0.2; done
cat "$out/server.log"
cli=(/tmp/bin/stavid --server 127.0.0.1:50051)
"${cli[@]}" health --service readiness; echo "health rc=$?"
"${cli[@]}" models
prompt="a red circle moves left on a dark blue background"
"${cli[@]}" generate --model demo --prompt "$prompt" --seed 7 -o "$out/gpu_demo.mp4" > "$out/client.txt" 2>&1
echo "generate rc=$?"; tail -3 "$out/client.txt"
"${cli[@]}" --json generate --model demo --prompt "$prompt" --seed 7 --frames 33 --steps 20 -o "$out/gpu_demo_33f.mp4" \
  > "$out/client_33f.jsonl" 2>&1
echo "generate 33 frames rc=$?"; tail -1 "$out/client_33f.jsonl" | cut -c1-400
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())" \
  > "$out/metrics.txt" 2>&1
grep -E '^stavid_(gpu|jobs_total|denoise)' "$out/metrics.txt"
kill -TERM $srv; wait $srv; echo "server exit $?"
