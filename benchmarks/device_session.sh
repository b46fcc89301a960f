#!/usr/bin/env bash
# One GPU session's work in one call (the `device` machine: one H200, no network, a short lease).
#
#   bash benchmarks/device_session.sh OUT_DIR [SECONDS]
#
# 1. with PRETRAIN_MINUTES > 0 (default 0: the shipped base is done), continues the demo base's
#    pretraining on the GPU, two learning rates side by side (background);
# 2. meanwhile, every family's tiny variant through gpu_iteration.py on CUDA (does the GPU path run?);
# 3. with PROTOCOL_SECONDS > 0 (default 0), the shapes protocol of issue 15 on the GPU (efficiency.py --task
#    shapes: every preset x lr grid x 3 seeds, 1024-sample evaluations, 8 runs at a time); the runs it
#    finishes are in results.tar (protocol/efficiency_shapes.runs.jsonl) for a later --reuse;
# 4. then, alone on the GPU, gpu_iteration.py at the published sizes, most important first, each bounded
#    by what is left of SECONDS (default 530).
# Everything lands in OUT_DIR as at most 8 files: base_<name>.tar per pretraining run, results.tar
# (JSON + logs, rewritten after every step so a cut-off run still returns what it finished), session.log.
set -u
out=${1:?usage: device_session.sh OUT_DIR [SECONDS]}
budget=${2:-530}
deadline=$((SECONDS + budget))
work=/tmp/device_session
mkdir -p "$out" "$work/results"
export PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
log() { echo "[$(date +%H:%M:%S) +${SECONDS}s] $*"; }
pack() { tar -C "$work" -cf "$out/results.tar" results; }
left() { echo $((deadline - SECONDS)); }
positive() { awk -v v="$1" 'BEGIN { exit !(v + 0 > 0) }'; }  # "0", "0.0", "" and "no" all read as off

log "environment"
python3 - <<'EOF' 2>&1 | tee "$work/results/environment.txt"
import torch, diffusers, transformers, peft, accelerate
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("diffusers", diffusers.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "accelerate", accelerate.__version__)
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$work/results/environment.txt"

# 1. pretraining continuations (GPU, background)
pretrain_minutes=${PRETRAIN_MINUTES:-0}
declare -A pretrain_pids
specs=("lr5e-4:5e-4:3" "lr3e-4:3e-4:4")
positive "$pretrain_minutes" || specs=()
for spec in "${specs[@]}"; do
  IFS=: read -r name lr seed <<<"$spec"
  python3 -m treegrpo.demo.pretrain --out "$work/base_$name" --init-from src/treegrpo/demo/base \
    --minutes "$pretrain_minutes" --seed "$seed" --lr "$lr" --threads 1 --guidance 1.0 --eval-every 60 \
    --checkpoint-every 0 --device cuda >"$work/results/pretrain_$name.log" 2>&1 &
  pretrain_pids[$name]=$!
  log "pretraining $name (pid ${pretrain_pids[$name]})"
done

# 2. tiny variants of every family on CUDA, in one process (timings meaningless: the GPU is shared)
log "tiny variants on cuda"
timeout 150 python3 - <<'EOF' >"$work/results/tiny_cuda.log" 2>&1
import traceback
import gpu_iteration
for size in ["tiny", "flux2_tiny", "zimage_tiny", "qwenimage_tiny", "wan_tiny", "flux_kontext_tiny", "qwenimage_edit_tiny"]:
    try:
        gpu_iteration.main(["--size", size, "--device", "cuda", "--dtype", "bf16", "--prompts", "1", "--warmup", "0",
                            "--flop-repeats", "1"])
        print("OK", size, flush=True)
    except Exception:
        traceback.print_exc()
        print("FAILED", size, flush=True)
EOF
grep -E "^(OK|FAILED)" "$work/results/tiny_cuda.log"
pack

for name in "${!pretrain_pids[@]}"; do
  wait "${pretrain_pids[$name]}"; log "pretraining $name exit $?"
  tail -n 30 "$work/results/pretrain_$name.log"
  [ -f "$work/base_$name/pretrain.json" ] && tar -C "$work" -cf "$out/base_$name.tar" "base_$name"
done
pack

# 3. the shapes protocol (rewards and NFE are exact under sharing; its seconds are measured 8 runs to a GPU)
protocol_seconds=${PROTOCOL_SECONDS:-0}
if positive "$protocol_seconds"; then
  t=$(left); [ "$t" -gt "$protocol_seconds" ] && t=$protocol_seconds
  log "shapes protocol (at most ${t}s)"
  timeout "$t" python3 benchmarks/efficiency.py --task shapes --jobs 8 --threads 2 --lrs 1e-4 3e-4 1e-3 --seeds 0 1 2 \
    --prompts 8 --eval-prompts 1024 --eval-points 4 --steps 8 \
    --set model.device=cuda train.parents_per_batch=null train.edges_per_batch=32 \
    --out "$work/results/protocol" >"$work/results/protocol.log" 2>&1
  log "protocol exit $? ($(wc -l <"$work/results/protocol/efficiency_shapes.runs.jsonl" 2>/dev/null || echo 0) runs)"
  tail -n 40 "$work/results/protocol.log"
  pack
fi

# 4. published sizes, alone on the GPU, most important first
run_size() {  # size, cap seconds, extra options...
  local size=$1 cap=$2; shift 2
  local t; t=$(left); [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 30 ]; then log "skip $size: ${t}s left"; return; fi
  log "gpu_iteration $size (at most ${t}s)"
  timeout "$t" python3 benchmarks/gpu_iteration.py --size "$size" --device cuda --dtype bf16 --out "$work/results" \
    "$@" >"$work/results/gpu_iteration_$size.log" 2>&1
  log "$size exit $?"; tail -n 12 "$work/results/gpu_iteration_$size.log"
  pack
}
run_size sd35m 170 --prompts 1 --warmup 1 --iterations 1 --flop-repeats 2
run_size flux2_klein4b 150 --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 2 --train-batch 2
run_size zimage 150 --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 2 --train-batch 2
run_size qwenimage 90 --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 2 --train lora --train-batch 2
run_size wan21_1.3b 150 --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 2 --train-batch 2 --gradient-checkpointing
run_size flux_kontext 150 --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 2 --train lora --train-batch 2 --gradient-checkpointing
run_size qwenimage_edit 150 --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 2 --train lora --train-batch 2 --gradient-checkpointing
log "done"
