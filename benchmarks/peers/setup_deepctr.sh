#!/usr/bin/env bash
# Creates the DeepCTR-Torch peer environment used by benchmarks/ctr_peers.py (NOT a project dependency).
#
#   bash benchmarks/peers/setup_deepctr.sh [VENV_DIR]      (default: /work/peers_venv)
#
# torch: the CPU wheel of the same version as the project's .venv, from download.pytorch.org; if that index
# is unreachable, a .pth file makes the peer venv import the project's torch (same build, no download).
# deepctr-torch 0.3.0 is installed with --no-deps (its only imports: torch, numpy, scikit-learn, tqdm, and
# `requests` for a version check at import time, which benchmarks/peers/deepctr_criteo.py stubs out).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-/work/peers_venv}"
PROJECT_PY="$REPO/.venv/bin/python"
TORCH_VERSION="$("$PROJECT_PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
PY_MM="$("$PROJECT_PY" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')"

python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
if ! "$VENV/bin/pip" install -q --retries 1 --timeout 15 "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu; then
    echo "CPU wheel index unreachable: the peer venv imports the project's torch through a .pth file" >&2
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$REPO/.venv/lib/python$PY_MM/site-packages" > "$SITE/zz_project_torch.pth"
fi
"$VENV/bin/pip" install -q "numpy<3" "scikit-learn" "tqdm"
"$VENV/bin/pip" install -q --no-deps "deepctr-torch==0.3.0"
"$VENV/bin/python" - <<'PY'
import sys, types
sys.modules["requests"] = types.ModuleType("requests")  # deepctr_torch's import-time version check: off
import torch, sklearn, deepctr_torch
print(f"peer venv ready: torch {torch.__version__}, scikit-learn {sklearn.__version__}, deepctr-torch {deepctr_torch.__version__}")
PY
