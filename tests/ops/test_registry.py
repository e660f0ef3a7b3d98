"""The op registry itself: every declared op has a reference, a fake kernel, opcheck and gradcheck cases;
the loader never raises; a per-device kernel overrides the reference on that device only."""

from __future__ import annotations

import warnings

import pytest
import torch

import recsys_emb.ops as ops
from recsys_emb.ops import _loader
from tests.ops.cases import GRADCHECK_CASES, OPCHECK_CASES


def _declared_ops() -> set[str]:
    return {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("recsys_emb::")}


def test_every_declared_op_is_complete():
    declared = _declared_ops()
    assert declared, "no recsys_emb:: op is registered"
    assert declared == set(ops.OPS), f"ops declared outside the registry: {declared ^ set(ops.OPS)}"
    for name, spec in ops.OPS.items():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, "CompositeExplicitAutograd"), f"{name}: no reference"
        fake = torch._library.simple_registry.singleton.find(spec.qualname).fake_impl.kernel
        assert fake is not None, f"{name}: no fake kernel"
        assert OPCHECK_CASES.get(name), f"{name}: no opcheck case in tests/ops/cases.py"
        if spec.differentiable:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, "Autograd"), f"{name}: no autograd"
            assert GRADCHECK_CASES.get(name), f"{name}: no gradcheck case in tests/ops/cases.py"
    assert set(OPCHECK_CASES) <= set(ops.OPS), "opcheck cases for ops that do not exist"


@pytest.mark.parametrize(
    "name,index", [(name, i) for name, cases in OPCHECK_CASES.items() for i in range(len(cases))]
)
def test_opcheck(name, index):
    args = OPCHECK_CASES[name][index]()
    result = torch.library.opcheck(getattr(torch.ops.recsys_emb, name).default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize(
    "name,index", [(name, i) for name, cases in GRADCHECK_CASES.items() for i in range(len(cases))]
)
def test_gradcheck(name, index):
    fn, inputs = GRADCHECK_CASES[name][index]()
    assert torch.autograd.gradcheck(fn, inputs)


def test_loader_warns_once_and_never_raises(monkeypatch):
    monkeypatch.setattr(_loader, "_state", {"tried": False, "loaded": False, "error": None})
    monkeypatch.setattr(_loader, "EXTENSION", "recsys_emb._C_not_built")  # emulate a missing build
    monkeypatch.delenv(_loader.DISABLE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ops.load_extension() is False
        assert ops.load_extension() is False
    assert len([w for w in caught if "recsys_emb._C_not_built" in str(w.message)]) == 1
    assert "recsys_emb._C_not_built" in ops.extension_error()


def test_loader_refuses_an_extension_with_a_static_libstdcxx(monkeypatch, tmp_path):
    # A shared object that does not name libstdc++.so.6 (here: not even an ELF file) is refused BEFORE it is
    # imported, with the rebuild advice; importing such a build would crash on the first TORCH_CHECK message.
    (tmp_path / "fake_ext.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF no shared c++ runtime named here")
    (tmp_path / "fake_ext.cpython-312-x86_64-linux-gnu.so").write_bytes(b"\x7fELF no shared c++ runtime named here")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_loader, "_state", {"tried": False, "loaded": False, "error": None})
    monkeypatch.setattr(_loader, "EXTENSION", "fake_ext")
    monkeypatch.delenv(_loader.DISABLE_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match="libstdc"):
        assert ops.load_extension() is False
    assert "CXX=/usr/bin/g++" in ops.extension_error()
    assert _loader.links_shared_libstdcxx(str(tmp_path / "fake_ext.cpython-311-x86_64-linux-gnu.so")) is False


@pytest.mark.skipif(_loader.extension_error() is not None, reason="recsys_emb._C is not built")
def test_the_built_extension_links_the_shared_libstdcxx():
    import importlib.util

    assert _loader.links_shared_libstdcxx(importlib.util.find_spec("recsys_emb._C").origin)


def test_loader_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(_loader, "_state", {"tried": False, "loaded": False, "error": None})
    monkeypatch.setenv(_loader.DISABLE_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.load_extension() is False
    assert _loader.DISABLE_ENV in ops.extension_error()


@pytest.mark.skipif(_loader.extension_error() is None, reason="the compiled CPU kernels are loaded (tests/ops/test_compiled.py covers them)")
def test_a_device_kernel_overrides_the_reference_on_that_device_only():
    """What a compiled CPU kernel (TORCH_LIBRARY_IMPL(recsys_emb, CPU, m)) does, emulated in Python."""
    values, fi, coeff, rows = OPCHECK_CASES["multi_probe_hash"][0]()
    reference = torch.ops.recsys_emb.multi_probe_hash(values, fi, coeff, rows)
    assert ops.kernel_status()["multi_probe_hash"] == {"CPU": "reference", "CUDA": "reference"}
    lib = torch.library.Library("recsys_emb", "IMPL")
    try:
        lib.impl("multi_probe_hash", lambda v, f, c, r: torch.full((v.shape[0], c.shape[1]), 7, dtype=torch.int64), "CPU")
        assert ops.kernel_status()["multi_probe_hash"] == {"CPU": "compiled", "CUDA": "reference"}
        assert bool((torch.ops.recsys_emb.multi_probe_hash(values, fi, coeff, rows) == 7).all())
        meta = torch.ops.recsys_emb.multi_probe_hash(values.to("meta"), fi.to("meta"), coeff.to("meta"), rows.to("meta"))
        assert meta.shape == reference.shape  # other devices keep the reference / fake
    finally:
        lib._destroy()
    assert torch.equal(torch.ops.recsys_emb.multi_probe_hash(values, fi, coeff, rows), reference)
    assert ops.kernel_status()["multi_probe_hash"]["CPU"] == "reference"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "name,index", [(name, i) for name, cases in OPCHECK_CASES.items() for i in range(len(cases))]
)
def test_cuda_matches_cpu(name, index):
    """Whatever kernel CUDA dispatches to (reference or compiled) agrees with the CPU result."""
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in OPCHECK_CASES[name][index]()]
    op = getattr(torch.ops.recsys_emb, name)
    cpu = op(*args)
    cuda = op(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
    for c, g in zip(cpu if isinstance(cpu, tuple) else (cpu,), cuda if isinstance(cuda, tuple) else (cuda,)):
        torch.testing.assert_close(g.cpu(), c)
