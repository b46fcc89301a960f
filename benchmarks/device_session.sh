#!/usr/bin/env bash
# One GPU session's work in one call (the `device` machine: one H200, no network, a short lease).
#
#   bash benchmarks/device_session.sh OUT_DIR [SECONDS]
#
# 1. with PRETRAIN_MINUTES > 0 (default 0: the shipped base is done), continues the demo base's
#    pretraining on the GPU, two learning rates side by side (background);
# 2. with TINY=1, every family's tiny variant through benchmarks.gpu_iteration on CUDA (does the GPU path run?);
# 3. with PROTOCOL_SECONDS > 0 (default 0), the shapes protocol (benchmarks.efficiency --task shapes: every
#    preset x lr grid x 3 seeds, 1024-sample evaluations, 8 runs at a time); the runs it finishes are
#    in results.tar (protocol/efficiency_shapes.runs.jsonl) for a later --reuse;
# 4. then, alone on the GPU, most important first, each bounded by what is left of SECONDS (default 530):
#    the paper's iteration (SD3.5-medium, TreeGRPO k3w3 against DanceGRPO, full fine-tuning, bf16
#    autocast), the 24 GB recipes (SD3.5-medium LoRA; FLUX.1-dev LoRA with float8 weights), and the
#    speed levers on SD3.5-medium (gpu_levers.py: micro-batches, attention kernels, AdamW, compile).
# Everything lands in OUT_DIR as at most 8 files: base_<name>.tar per pretraining run, results.tar
# (JSON + logs, rewritten after every step so a cut-off run still returns what it finished), session.log.
set -u
out=${1:?usage: device_session.sh OUT_DIR [SECONDS]}
budget=${2:-530}
deadline=$((SECONDS + budget))
work=/tmp/device_session
mkdir -p "$out" "$work/results"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
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
  python3 -m tools.shapes_base.pretrain --out "$work/base_$name" --init-from src/treegrpo/demo/base \
    --minutes "$pretrain_minutes" --seed "$seed" --lr "$lr" --threads 1 --guidance 1.0 --eval-every 60 \
    --checkpoint-every 0 --device cuda >"$work/results/pretrain_$name.log" 2>&1 &
  pretrain_pids[$name]=$!
  log "pretraining $name (pid ${pretrain_pids[$name]})"
done

# 2. tiny variants of every family on CUDA, in one process (timings meaningless: the GPU is shared)
if [ "${TINY:-0}" = 1 ]; then
log "tiny variants on cuda"
timeout 150 python3 - <<'EOF' >"$work/results/tiny_cuda.log" 2>&1
import traceback
from benchmarks import gpu_iteration
for size in ["tiny", "flux_dev_tiny", "flux2_tiny", "zimage_tiny", "qwenimage_tiny", "wan_tiny", "flux_kontext_tiny", "qwenimage_edit_tiny"]:
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
fi

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
  timeout "$t" python3 -m benchmarks.efficiency --task shapes --jobs 8 --threads 2 --lrs 1e-4 3e-4 1e-3 --seeds 0 1 2 \
    --prompts 8 --eval-prompts 1024 --eval-points 4 --steps 8 \
    --set model.device=cuda train.parents_per_batch=null train.edges_per_batch=32 \
    --out "$work/results/protocol" >"$work/results/protocol.log" 2>&1
  log "protocol exit $? ($(wc -l <"$work/results/protocol/efficiency_shapes.runs.jsonl" 2>/dev/null || echo 0) runs)"
  tail -n 40 "$work/results/protocol.log"
  pack
fi

# 4. published sizes, alone on the GPU, most important first
run_bench() {  # module of benchmarks/, json/log name, cap seconds, options...
  local script=$1 name=$2 cap=$3; shift 3
  local t; t=$(left); [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 30 ]; then log "skip $name: ${t}s left"; return; fi
  log "$script $name (at most ${t}s)"
  timeout "$t" python3 -m "benchmarks.$script" --device cuda --dtype bf16 "$@" >"$work/results/$name.log" 2>&1
  log "$name exit $?"; tail -n 14 "$work/results/$name.log"
  pack
}
# the paper's iteration: SD3.5-medium, 512 px, 10 steps, CFG 4.5, full fine-tuning (fp32 masters, bf16 autocast)
run_bench gpu_iteration sd35m_paper 200 --size sd35m --prompts 2 --warmup 1 --warmup-first-only --iterations 1 \
  --flop-repeats 2 --out "$work/results/sd35m_paper"
# 24 GB recipes: LoRA, gradient checkpointing, reward model offloaded; FLUX.1-dev with float8 weights
run_bench gpu_iteration sd35m_24gb 60 --size sd35m --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 1 \
  --train lora --gradient-checkpointing --reward-offload --train-batch 2 --max-batch 8 --decode-batch 2 \
  --out "$work/results/sd35m_24gb"
run_bench gpu_iteration flux_dev_24gb 120 --size flux_dev --prompts 1 --methods treegrpo --warmup 0 --flop-repeats 1 \
  --train lora --gradient-checkpointing --reward-offload --storage-dtype fp8_e4m3 --guidance 3.5 --train-batch 2 \
  --max-batch 8 --decode-batch 2 \
  --out "$work/results/flux_dev_24gb"
# the speed levers on SD3.5-medium (full fine-tuning as the paper), compile last
run_bench gpu_levers sd35m_levers 200 --size sd35m --prompts 1 --compile --out "$work/results/sd35m_levers"
log "done"
