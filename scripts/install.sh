#!/usr/bin/env bash
# Installs recsys_emb and its pinned stack into a virtual environment (default .venv).
#
#   scripts/install.sh            # CPU stack (auto-detects an NVIDIA GPU, see below)
#   RECSYS_EMB_DEVICE=cuda scripts/install.sh
#
# Pins (each fbgemm release targets exactly one torch minor; TorchRec pairs with that fbgemm):
#   CPU : torch 2.13.0 (CPU build), fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0
#   CUDA: torch 2.13.0 (+cu CUDA build), fbgemm-gpu 1.8.0 (same CUDA), torchrec 1.8.0
# Environment variables:
#   VENV                 venv folder (default .venv)
#   PYTHON               interpreter used to create it (default python3; needs 3.10-3.12)
#   RECSYS_EMB_DEVICE    cpu | cuda | auto (default auto: cuda when nvidia-smi lists a GPU)
#   TORCH_INDEX_URL      extra index for torch/fbgemm wheels, e.g.
#                        https://download.pytorch.org/whl/cpu   (CPU torch, ~200 MB instead of ~2 GB)
#                        https://download.pytorch.org/whl/cu130 (CUDA 13.0 builds; required for cuda)
#   RECSYS_EMB_NO_EXT=1  skip building the optional compiled kernels recsys_emb._C (csrc/, docs/kernels.md);
#                        the pure-PyTorch reference ops are used instead (a one-time warning says so)
# The script is idempotent: re-running it on a complete venv only re-checks it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.13.0
FBGEMM_VERSION=1.8.0
TORCHREC_VERSION=1.8.0
device="${RECSYS_EMB_DEVICE:-auto}"
if [ "$device" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    device=cuda
  else
    device=cpu
  fi
fi

stamp="$VENV/.recsys_emb_install"
want="torch=$TORCH_VERSION fbgemm=$FBGEMM_VERSION torchrec=$TORCHREC_VERSION device=$device ext=$([ "${RECSYS_EMB_NO_EXT:-0}" = 1 ] && echo no || echo yes) $(cat setup.py requirements.txt $(find csrc -type f | sort) | sha1sum | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] $VENV is up to date ($want)"
  exit 0
fi

echo "[install] creating $VENV with $($PYTHON --version) for device=$device"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install --progress-bar off)
index=()
[ -n "${TORCH_INDEX_URL:-}" ] && index=(--extra-index-url "$TORCH_INDEX_URL")

"${pip[@]}" --upgrade "pip>=23" "setuptools>=65" wheel >/dev/null
# 1. torch first, exact version: a bare 'torch' requirement anywhere later would resolve a newer build.
"${pip[@]}" "${index[@]}" "torch==$TORCH_VERSION"
# 2. fbgemm matching that torch.
if [ "$device" = cuda ]; then
  "${pip[@]}" "${index[@]}" "fbgemm-gpu==$FBGEMM_VERSION"
else
  "${pip[@]}" "${index[@]}" "fbgemm-gpu-cpu==$FBGEMM_VERSION"
  # torchrec requires 'fbgemm-gpu': satisfy it with a files-less alias to the CPU build.
  FBGEMM_VERSION=$FBGEMM_VERSION "${pip[@]}" --no-build-isolation --no-deps ./scripts/fbgemm_gpu_cpu_alias
fi
# 3. torchrec and the rest; constrained so nothing replaces torch or fbgemm.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\nfbgemm-gpu==%s\n' "$TORCH_VERSION" "$FBGEMM_VERSION" >"$constraints"
[ "$device" = cpu ] && printf 'fbgemm-gpu-cpu==%s\n' "$FBGEMM_VERSION" >>"$constraints"
"${pip[@]}" "${index[@]}" -c "$constraints" "torchrec==$TORCHREC_VERSION" -r requirements.txt
# 4. the project itself (editable), which also compiles recsys_emb._C from csrc/ with the installed torch
#    (setup.py; ~30 s of CPU with g++; RECSYS_EMB_NO_EXT=1 skips it). No build isolation: an isolated build
#    would resolve another torch (and could not see this one to compile against).
"${pip[@]}" -c "$constraints" --no-build-isolation --no-deps -e .
# 5. prove it.
"$py" -m pip check
"$py" -c "import torch, fbgemm_gpu, torchrec, recsys_emb; print('[install] ok: torch', torch.__version__, '| torchrec', torchrec.__version__ if hasattr(torchrec, '__version__') else '$TORCHREC_VERSION')"
"$py" -W ignore -c "import recsys_emb.ops as o; print('[install] kernels:', o.extension_status())"
echo "$want" >"$stamp"
