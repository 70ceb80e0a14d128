#!/usr/bin/env bash
# One device call of the demo-model training plan (docs/demo-model.md). Runs the given stages in order on
# the run folder tools/demo/runs/main (carried in and out), each with its minute budget, then packs the run
# folder (checkpoints, tokenizers, logs, eval report) into $OUT as run.tar.part-NN pieces of <= 15 MiB (a
# call returns at most 8 files of 16 MiB). Unpack here with: cat FILES_AT/run.tar.part-* | tar -x -C tools/demo/runs
#
#   tools/demo/device_run.sh "text:1 vae:6"            # call 1
#   tools/demo/device_run.sh "dit:9"                   # call 2
#   tools/demo/device_run.sh "sta:5 eval"              # call 3
# A stage is NAME[:MINUTES[:EXTRA ARGS, comma separated]]; "eval" runs tools/demo/eval.py.
# PACK=dit,vae,...: pack only these subfolders (plus spec.json, tokenizers, logs, eval); default all.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-tools/demo/runs/main}
OUT=${OUT:-./gpu-out}
mkdir -p "$RUN" "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
rc=0
for item in $1; do
  IFS=: read -r name minutes extra <<< "$item"
  args=()
  [ -n "${extra:-}" ] && IFS=, read -r -a args <<< "$extra"
  if [ "$name" = eval ]; then
    "$PY" tools/demo/eval.py --run "$RUN" "${args[@]}" 2>&1 | tee -a "$OUT/log.txt" || rc=1
  else
    "$PY" tools/demo/train.py "$name" --run "$RUN" ${minutes:+--minutes "$minutes"} "${args[@]}" 2>&1 \
      | tee -a "$OUT/log.txt" || rc=1
  fi
done
sel=(spec.json tokenizer tokenizer_2 logs)
[ -d "$RUN/eval" ] && sel+=(eval)
for d in ${PACK:-text vae dit sta}; do [ -d "$RUN/$d" ] && sel+=("$d"); done
tar -C "$RUN" -cf - "${sel[@]}" | split -b 15M -d - "$OUT/run.tar.part-"
ls -la "$OUT"
exit $rc
