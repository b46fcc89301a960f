#!/usr/bin/env bash
# Seconds per iteration of the tiny task (configs/tiny_shapes.yaml) on the CPU: one process with 1 and
# 2 torch threads, two processes (1 thread each) with DDP and with FSDP (train.fsdp=true).
#   bash benchmarks/processes.sh [OUT]      (OUT defaults to a temp folder; prints one line per setting)
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out"
python=${PYTHON:-python}
common="train.iterations=4 train.eval_every=0 train.eval_at_start=false train.checkpoint_every=0 train.progress=false"
launch="$python -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no --main_process_port 29531 -m treegrpo"
OMP_NUM_THREADS=1 $python -m treegrpo train configs/tiny_shapes.yaml $common --output-dir "$out/1proc-1thread" --overwrite > "$out/1proc-1thread.log" 2>&1
OMP_NUM_THREADS=2 $python -m treegrpo train configs/tiny_shapes.yaml $common --output-dir "$out/1proc-2threads" --overwrite > "$out/1proc-2threads.log" 2>&1
OMP_NUM_THREADS=1 $launch train configs/tiny_shapes.yaml $common --output-dir "$out/2procs-ddp" --overwrite > "$out/2procs-ddp.log" 2>&1
OMP_NUM_THREADS=1 $launch train configs/tiny_shapes.yaml $common train.fsdp=true --output-dir "$out/2procs-fsdp" --overwrite > "$out/2procs-fsdp.log" 2>&1
for run in 1proc-1thread 1proc-2threads 2procs-ddp 2procs-fsdp; do
  $python - "$out/$run/metrics.jsonl" "$run" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
seconds = [r["seconds"] for r in records]
print(f"{sys.argv[2]:>15}: {sum(seconds[1:]) / len(seconds[1:]):.2f} s/iter (iterations 2-4; first {seconds[0]:.2f} s)  "
      f"training reward {[round(r['reward_mean'], 3) for r in records]}")
PY
done
