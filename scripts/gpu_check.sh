#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, as ONE command (under 9 minutes on one H100):
#
#   OUT=/path/to/out scripts/gpu_check.sh [--wheels DIR] [--dry-run]
#
# Steps (each with its own time limit; a failed step is recorded and the next one still runs):
#   env       nvidia-smi, python/torch/CUDA versions                      -> $OUT/env.txt
#   install   only when torchrec/fbgemm_gpu do not import: scripts/install.sh with the machine's torch
#             (RECSYS_EMB_TORCH=system, RECSYS_EMB_DEVICE=cuda; --wheels DIR = offline wheels), then the
#             compiled kernels with the system compiler (docs/INSTALL.md: a static-libstdc++ g++ breaks them)
#   doctor    recsys-emb doctor                                             -> $OUT/logs/doctor.log
#   tests     the CUDA test subset (pytest -k cuda over tests/ops; the kernels vs their CPU references)
#   kernels   benchmarks/kernels.py --device cuda --quick                  -> $OUT/results/kernels_cuda.{json,md}
#   train-*   each model family (ctr, sequence, graph, two_tower) on its tiny config through torchrun + NCCL: train
#             to a step checkpoint, then --resume to the end              -> $OUT/runs/<family>/metrics.json
#   sharding  benchmarks/sharding_scaling.py --device cuda (needs 2 GPUs; recorded as skipped on 1)
# $OUT/summary.tsv lists step, status, seconds; the exit status is non-zero when any step failed.
#
# --dry-run (CI, CPU): prints every command, checks that every script, config and benchmark it names
# exists and parses (--help), and runs the three training steps on the CPU (gloo) with 2 steps each,
# so the commands themselves are proven; nothing needs a GPU.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
dry_run=0
wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --wheels) wheels="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$here/gpu_check_out}"
mkdir -p "$OUT/logs" "$OUT/results" "$OUT/runs" "$OUT/data"
VENV="${VENV:-$here/.venv}"
PY="${PY:-$VENV/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
device=cuda
[ "$dry_run" = 1 ] && device=cpu
failed=0
printf 'step\tstatus\tseconds\n' > "$OUT/summary.tsv"

# run_step NAME TIMEOUT_S CMD...: run (or, in a dry run of a GPU-only step, only print) one step.
run_step() {
  local name="$1" limit="$2"; shift 2
  echo "[gpu_check] $name: $*"
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1 || rc=$?
  local status=ok
  if [ "$rc" = 124 ]; then status="timeout(${limit}s)"; elif [ "$rc" != 0 ]; then status="failed(rc=$rc)"; fi
  [ "$status" = ok ] || { failed=1; tail -n 20 "$OUT/logs/$name.log" >&2; }
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$OUT/summary.tsv"
  echo "[gpu_check] $name: $status ($((SECONDS - t0)) s)"
}
gpu_step() {  # a step that only makes sense on a GPU: printed and its inputs checked in a dry run
  local name="$1" limit="$2"; shift 2
  if [ "$dry_run" = 1 ]; then
    echo "[gpu_check] $name (dry run, not run): $*"
    printf '%s\t%s\t0\n' "$name" "dry-run" >> "$OUT/summary.tsv"
  else
    run_step "$name" "$limit" "$@"
  fi
}

# ---------------------------------------------------------------------------------------- env + install
{
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
} > "$OUT/env.txt" 2>&1
if ! "$PY" -c 'import recsys_emb, torchrec, fbgemm_gpu' > /dev/null 2>&1; then
  install_env=(env RECSYS_EMB_TORCH=system RECSYS_EMB_DEVICE=cuda "VENV=$VENV" "PYTHON=$(command -v python3)")
  [ -n "$wheels" ] && install_env+=(PIP_NO_INDEX=1 "PIP_FIND_LINKS=$wheels")
  gpu_step install 300 "${install_env[@]}" bash scripts/install.sh
  PY="$VENV/bin/python"
fi
gpu_step build-kernels 120 env CC=/usr/bin/gcc CXX=/usr/bin/g++ "$PY" setup.py build_ext --inplace
run_step doctor 60 "$PY" -m recsys_emb doctor

# ---------------------------------------------------------------------------------------- kernels
gpu_step tests 180 "$PY" -m pytest -q -k cuda tests/ops
run_step kernels-help 60 "$PY" benchmarks/kernels.py --help
gpu_step kernels 150 "$PY" benchmarks/kernels.py --device cuda --quick --out "$OUT/results/kernels_cuda"

# ---------------------------------------------------------------------------------------- training
run_step data 120 "$PY" - "$OUT/data" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from recsys_emb.data.sequences import write_synthetic_s3rec
from recsys_emb.data.synthetic import synth_criteo

out = Path(sys.argv[1])
synth_criteo(out / "criteo", 20000, 4000, seed=0, progress=False)
write_synthetic_s3rec(out / "seq", users=300, items=120, seed=0)
rng = np.random.default_rng(0)  # a two-community graph in the LightGCN text format
graph = out / "graph"
graph.mkdir(parents=True, exist_ok=True)
for split, per_user in (("train", 8), ("test", 2)):
    lines = []
    for u in range(200):
        items = rng.choice(np.arange(60) + (60 if u % 2 else 0), size=per_user, replace=False)
        lines.append(" ".join(map(str, [u, *sorted(items)])))
    (graph / f"{split}.txt").write_text("\n".join(lines) + "\n")
EOF
nproc_gpu="$("$PY" -c 'import torch; print(max(torch.cuda.device_count(), 1))' 2>/dev/null || echo 1)"
[ "$dry_run" = 1 ] && nproc_gpu=1
steps=20
[ "$dry_run" = 1 ] && steps=2
# family config data-arguments
families=(
  "ctr configs/criteo_dcnv2_tiny.yaml --train $OUT/data/criteo/train.txt.gz --test $OUT/data/criteo/test.txt.gz --set data.cache_dir=$OUT/data/cache"
  "sequence configs/amazon_beauty_dare_tiny.yaml --data $OUT/data/seq --set data.dataset=s3rec --set data.stem=Synth"
  "graph configs/gowalla_lightgcn_tiny.yaml --data $OUT/data/graph"
  "two_tower configs/ml1m_two_tower_tiny.yaml --data $OUT/data/graph --set data.valid=false"
)
for entry in "${families[@]}"; do
  read -r family config rest <<< "$entry"
  read -r -a data_args <<< "$rest"
  run="$OUT/runs/$family"
  rm -rf "$run"
  common=(--set "train.device=$device" --set train.progress=false --set train.tensorboard=false)
  run_step "train-$family" 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc_gpu" -m recsys_emb train \
    --config "$config" "${data_args[@]}" --run-dir "$run" "${common[@]}" \
    --set "train.max_steps=$steps" --set "train.checkpoint_every_steps=$steps"
  run_step "resume-$family" 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc_gpu" -m recsys_emb train \
    --resume --run-dir "$run" --set "train.max_steps=$((2 * steps))"
done

# ---------------------------------------------------------------------------------------- sharding
run_step sharding-help 60 "$PY" benchmarks/sharding_scaling.py --help
if [ "$dry_run" = 0 ] && [ "$nproc_gpu" -lt 2 ]; then
  echo "[gpu_check] sharding: skipped (needs 2 GPUs for NCCL between processes; found $nproc_gpu)"
  printf 'sharding\tskipped(1 GPU)\t0\n' >> "$OUT/summary.tsv"
else
  gpu_step sharding 150 "$PY" benchmarks/sharding_scaling.py --device cuda --world-size "$nproc_gpu" --steps 20 \
    --results "$OUT/results"
fi

echo "[gpu_check] summary ($OUT/summary.tsv):"
column -t -s $'\t' "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"
exit "$failed"
