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
#   RECSYS_EMB_TORCH     pinned (default: install torch 2.13.0) | system: keep the torch already installed
#                        in $PYTHON (e.g. a CUDA image's), in a --system-site-packages venv, and install the
#                        fbgemm-gpu(-cpu) / torchrec releases built for it (recsys_emb/doctor.py COMPATIBLE).
#                        Offline: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR (pip's own variables) with the wheels in DIR.
#                        If $PYTHON is itself a venv, set VENV to that venv (installs into it): a venv made
#                        from a venv's python would not see that venv's torch.
#   RECSYS_EMB_LOCK      requirements.lock (default): install requirements.txt under the exact versions the test
#                        suite passed with (pip constraints; recsys_emb/lockfile.py) | none: newest versions that
#                        requirements.txt allows (recorded in the venv; `recsys-emb doctor` then skips the lock check)
#                        | another lock file. A lock is resolved for one Python minor (its '# python:' line).
#   RECSYS_EMB_INSTALL_DRY_RUN=1  print what would be installed, change nothing
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

torch_mode="${RECSYS_EMB_TORCH:-pinned}"
venv_args=()
case "$torch_mode" in
  pinned) ;;
  system)
    # Keep $PYTHON's torch; the fbgemm/torchrec pair comes from the table `recsys-emb doctor` checks against.
    if ! TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)"; then
      echo "[install] RECSYS_EMB_TORCH=system needs a PYTHON with torch installed; '$PYTHON' cannot import torch" >&2
      exit 1
    fi
    # A venv made from a venv's python sees the BASE interpreter's site-packages, not that venv's torch.
    py_venv="$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.prefix) if sys.prefix != sys.base_prefix else "")')"
    if [ -n "$py_venv" ] && [ "$py_venv" != "$(realpath -m "$VENV")" ]; then
      echo "[install] RECSYS_EMB_TORCH=system: '$PYTHON' is a virtual environment ($py_venv); a new venv made from it" \
           "would not see its torch. Install into that environment instead: VENV=$py_venv PYTHON=$PYTHON" \
           "RECSYS_EMB_TORCH=system scripts/install.sh" >&2
      exit 1
    fi
    if [ "$device" = cuda ] && [ "$("$PYTHON" -c 'import torch; print(torch.version.cuda is not None)')" != True ]; then
      echo "[install] RECSYS_EMB_DEVICE=cuda but the torch of '$PYTHON' ($TORCH_VERSION) is a CPU build" >&2
      exit 1
    fi
    read -r fbgemm_minor torchrec_minor < <("$PYTHON" -c 'import runpy, sys
try:
    print(*runpy.run_path("recsys_emb/doctor.py")["stack_for_torch"](sys.argv[1]))
except ValueError as e:
    sys.exit(f"[install] {e}")' "$TORCH_VERSION") || exit 1
    FBGEMM_VERSION="$fbgemm_minor.*"
    TORCHREC_VERSION="$torchrec_minor.*"
    venv_args=(--system-site-packages)
    echo "[install] keeping torch $TORCH_VERSION of $PYTHON: fbgemm $FBGEMM_VERSION, torchrec $TORCHREC_VERSION"
    ;;
  *) echo "[install] RECSYS_EMB_TORCH must be pinned or system, got '$torch_mode'" >&2; exit 1 ;;
esac

lock="${RECSYS_EMB_LOCK:-requirements.lock}"
if [ "$lock" != none ]; then
  if [ ! -f "$lock" ]; then
    echo "[install] RECSYS_EMB_LOCK=$lock: no such file (the default is requirements.lock; 'none' opts out)" >&2
    exit 1
  fi
  lock_python="$(sed -n 's/^# python: *//p' "$lock" | head -n 1)"
  python_minor="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ "$lock_python" != "$python_minor" ]; then
    echo "[install] $lock holds the versions the test suite passed with on Python ${lock_python:-?}, but '$PYTHON' is" \
         "Python $python_minor. Use PYTHON=python${lock_python:-3.11}, or install the newest versions requirements.txt" \
         "allows with RECSYS_EMB_LOCK=none (untested combination; docs/INSTALL.md)" >&2
    exit 1
  fi
fi

stamp="$VENV/.recsys_emb_install"
want="torch=$TORCH_VERSION fbgemm=$FBGEMM_VERSION torchrec=$TORCHREC_VERSION device=$device ext=$([ "${RECSYS_EMB_NO_EXT:-0}" = 1 ] && echo no || echo yes) lock=$lock $(cat setup.py requirements.txt $([ "$lock" = none ] || echo "$lock") $(find csrc -type f | sort) | sha1sum | cut -c1-12)"
if [ "${RECSYS_EMB_INSTALL_DRY_RUN:-0}" = 1 ]; then
  echo "[install] dry run: would install into $VENV: $want (torch mode: $torch_mode)"
  exit 0
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] $VENV is up to date ($want)"
  exit 0
fi

echo "[install] creating $VENV with $($PYTHON --version) for device=$device"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
py="$VENV/bin/python"
if [ "$torch_mode" = system ] && ! "$py" -c 'import torch' 2>/dev/null; then
  echo "[install] RECSYS_EMB_TORCH=system: $VENV cannot import the torch of '$PYTHON' (was $VENV made from another" \
       "interpreter, without --system-site-packages?); remove it or choose another VENV" >&2
  exit 1
fi
pip=("$py" -m pip install --progress-bar off)
index=()
[ -n "${TORCH_INDEX_URL:-}" ] && index=(--extra-index-url "$TORCH_INDEX_URL")

"${pip[@]}" --upgrade "pip>=23" "setuptools>=65" wheel >/dev/null
# 1. torch first, exact version: a bare 'torch' requirement anywhere later would resolve a newer build.
#    (RECSYS_EMB_TORCH=system: the venv sees $PYTHON's torch, which the constraints below then hold.)
[ "$torch_mode" = system ] || "${pip[@]}" "${index[@]}" "torch==$TORCH_VERSION"
# 2. fbgemm matching that torch.
if [ "$device" = cuda ]; then
  "${pip[@]}" "${index[@]}" "fbgemm-gpu==$FBGEMM_VERSION"
else
  "${pip[@]}" "${index[@]}" "fbgemm-gpu-cpu==$FBGEMM_VERSION"
  FBGEMM_VERSION="$("$py" -c 'import importlib.metadata as m; print(m.version("fbgemm-gpu-cpu"))')"  # exact, for the alias
  # torchrec requires 'fbgemm-gpu': satisfy it with a files-less alias to the CPU build.
  FBGEMM_VERSION=$FBGEMM_VERSION "${pip[@]}" --no-build-isolation --no-deps ./scripts/fbgemm_gpu_cpu_alias
fi
# 3. torchrec and the rest; constrained so nothing replaces torch or fbgemm.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\nfbgemm-gpu==%s\n' "$TORCH_VERSION" "$FBGEMM_VERSION" >"$constraints"
[ "$device" = cpu ] && printf 'fbgemm-gpu-cpu==%s\n' "$FBGEMM_VERSION" >>"$constraints"
[ "$lock" = none ] || cat "$lock" >>"$constraints"
"${pip[@]}" "${index[@]}" -c "$constraints" "torchrec==$TORCHREC_VERSION" -r requirements.txt
# 4. the project itself (editable), which also compiles recsys_emb._C from csrc/ with the installed torch
#    (setup.py; ~30 s of CPU with g++; RECSYS_EMB_NO_EXT=1 skips it). No build isolation: an isolated build
#    would resolve another torch (and could not see this one to compile against).
"${pip[@]}" -c "$constraints" --no-build-isolation --no-deps -e .
# 5. prove it.
"$py" -m pip check
"$py" -c "import torch, fbgemm_gpu, torchrec, recsys_emb; print('[install] ok: torch', torch.__version__, '| torchrec', torchrec.__version__ if hasattr(torchrec, '__version__') else '$TORCHREC_VERSION')"
"$py" -W ignore -c "import recsys_emb.ops as o; print('[install] kernels:', o.extension_status())"
# what doctor (and tests/test_lock.py) compare against: the lock, or an explicit opt-out
if [ "$lock" = none ]; then echo none >"$VENV/.recsys_emb_lock"; else echo "$lock" >"$VENV/.recsys_emb_lock"; fi
echo "$want" >"$stamp"
