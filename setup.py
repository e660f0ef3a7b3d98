"""Build script for recsys_emb.

torch, fbgemm-gpu(-cpu) and torchrec are deliberately NOT in ``install_requires``: pip would
resolve torchrec's bare ``fbgemm-gpu`` requirement to the newest CUDA wheel, which does not load
with our torch. ``scripts/install.sh`` installs the matching trio first (docs/INSTALL.md).

The optional compiled kernels ``recsys_emb._C`` (``csrc/``, see docs/kernels.md) are built with
``torch.utils.cpp_extension``: C++ CPU kernels always, CUDA kernels too when torch is a CUDA build and
``CUDA_HOME`` (nvcc) exists. The build needs the installed torch, so install without build isolation::

    pip install --no-build-isolation -e .          # builds recsys_emb._C
    RECSYS_EMB_NO_EXT=1 pip install -e .           # pure Python (reference ops)
    python setup.py build_ext --inplace            # rebuild the extension in place

Without ``torch`` importable at build time (e.g. an isolated ``pip install .``) the extension is
skipped with a message, and the package falls back to the pure-PyTorch reference ops at run time.
"""

import os
import re
import sys
from glob import glob

from setuptools import find_packages, setup

NO_EXT_ENV = "RECSYS_EMB_NO_EXT"


def _extensions():
    """(ext_modules, cmdclass) for recsys_emb._C, or ([], {}) when skipped."""
    if os.environ.get(NO_EXT_ENV, "0") not in ("", "0"):
        print(f"[recsys_emb] {NO_EXT_ENV} set: not building the compiled kernels", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("[recsys_emb] torch is not importable at build time (build isolation?): not building the compiled "
              "kernels; use `pip install --no-build-isolation`", file=sys.stderr)
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(os.path.relpath(p, here) for p in glob(os.path.join(here, "csrc", "cpu", "*.cpp")))
    sources.append(os.path.join("csrc", "module.cpp"))
    cxx = ["-O3", "-g0", "-fopenmp"]
    macros = []
    extension = cpp_extension.CppExtension
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        sources += sorted(os.path.relpath(p, here) for p in glob(os.path.join(here, "csrc", "cuda", "*.cu")))
        extension = cpp_extension.CUDAExtension
        macros.append(("RECSYS_EMB_WITH_CUDA", None))
    extra = {"cxx": cxx}
    if with_cuda:
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    ext = extension(
        "recsys_emb._C",
        sources,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        define_macros=macros,
        py_limited_api=False,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "recsys_emb", "__init__.py"), encoding="utf-8") as _f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', _f.read(), re.M).group(1)  # one source of the version

setup(
    name="recsys_emb",
    version=VERSION,
    license="Apache-2.0",
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
        "matplotlib>=3.8",
    ],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["recsys-emb=recsys_emb.cli:run"]},
)
