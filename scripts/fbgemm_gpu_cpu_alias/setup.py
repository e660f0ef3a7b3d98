"""Metadata-only distribution named ``fbgemm-gpu`` that depends on ``fbgemm-gpu-cpu``.

TorchRec declares a bare ``fbgemm-gpu`` requirement. On a CPU-only machine, resolving it pulls the
CUDA wheel of the newest fbgemm-gpu, which overwrites ``fbgemm_gpu/`` and breaks ``import torchrec``
(see docs/INSTALL.md). Installing this alias first satisfies the requirement with the CPU build that
matches our torch, so ``pip check`` stays clean and later installs do not pull the CUDA wheel.
It ships no files.
"""

import os

from setuptools import setup

version = os.environ.get("FBGEMM_VERSION", "1.8.0")
setup(
    name="fbgemm-gpu",
    version=version,
    description="Alias: satisfies 'fbgemm-gpu' with the CPU build fbgemm-gpu-cpu (recsys_emb installer)",
    install_requires=[f"fbgemm-gpu-cpu=={version}"],
    packages=[],
    py_modules=[],
)
