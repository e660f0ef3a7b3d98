"""Build script for recsys_emb.

torch, fbgemm-gpu(-cpu) and torchrec are deliberately NOT in ``install_requires``: pip would
resolve torchrec's bare ``fbgemm-gpu`` requirement to the newest CUDA wheel, which does not load
with our torch. ``scripts/install.sh`` installs the matching trio first (docs/INSTALL.md).
"""

from setuptools import find_packages, setup

setup(
    name="recsys_emb",
    version="0.1.0",
    description="Embedding techniques for recommender systems on TorchRec and FBGEMM",
    python_requires=">=3.10",
    packages=find_packages(include=["recsys_emb", "recsys_emb.*"]),
    install_requires=[
        "numpy>=1.26",
        "polars>=1.0",
        "pyarrow>=15",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "tensorboard>=2.15",
    ],
    entry_points={"console_scripts": ["recsys-emb=recsys_emb.cli:main"]},
)
