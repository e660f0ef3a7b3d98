"""Example inputs per registered op, used by the opcheck / gradcheck tests and the completeness test.

Every op of ``recsys_emb.ops.OPS`` must have an entry in ``OPCHECK_CASES``; every differentiable op
one in ``GRADCHECK_CASES`` (checked by ``test_registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

P61 = (1 << 61) - 1


def hash_inputs(n: int = 7, f: int = 3, k: int = 2, m: int = 11, seed: int = 0, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g).to(dtype)
    feature_index = torch.randint(0, f, (n,), generator=g)
    coefficients = torch.randint(0, P61, (f, k, 3), generator=g)
    num_rows = torch.randint(1, m + 1, (f,), generator=g)
    return values, feature_index, coefficients, num_rows


def bag_inputs(lengths=(2, 0, 3, 1), f: int = 2, k: int = 2, m: int = 13, d: int = 4, dtype=torch.float64,
               mode: str = "sum", weighted: bool = True, seed: int = 0, requires_grad: bool = False):
    n = sum(lengths)
    values, feature_index, coefficients, _ = hash_inputs(n, f, k, m, seed)
    num_rows = torch.full((f,), m, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0).tolist()], dtype=torch.int64)
    psw = torch.rand(n, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad) if weighted else None
    return weight, values, offsets, feature_index, coefficients, num_rows, mode, psw


def sid_inputs(lengths=(1, 3, 0, 2), items: int = 4, id_dtype=torch.int64, id_offset: int = 0, seed: int = 0):
    """A jagged code table of ``items`` known items (0..3 pieces each) + the unknown item (row 0)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (items,), generator=g)
    item_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0), counts.sum().reshape(1) + 1])
    item_rows = torch.cat([torch.randint(1, 20, (int(counts.sum()),), generator=g), torch.zeros(1, dtype=torch.int64)])
    ids = torch.randint(-1, items + 2, (sum(lengths),), generator=g).to(id_dtype) + id_offset
    return ids, torch.tensor(lengths, dtype=torch.int32), item_offsets, item_rows, id_offset


def _backward_inputs(mode: str, weighted: bool):
    weight, values, offsets, feature_index, coefficients, num_rows, mode, psw = bag_inputs(mode=mode, weighted=weighted)
    grad = torch.randn(offsets.numel() - 1, coefficients.shape[1], weight.shape[1], dtype=weight.dtype)
    return grad, values, offsets, feature_index, coefficients, num_rows, weight.shape[0], mode, psw


# op name -> list of argument tuples for torch.library.opcheck
OPCHECK_CASES: dict[str, list[Callable[[], tuple]]] = {
    "multi_probe_hash": [
        lambda: hash_inputs(),
        lambda: hash_inputs(dtype=torch.int32),
        lambda: hash_inputs(n=0),
        lambda: hash_inputs(f=1, k=3),
    ],
    "hashed_embedding_bag": [
        lambda: bag_inputs(requires_grad=True),
        lambda: bag_inputs(mode="mean", requires_grad=True),
        lambda: bag_inputs(weighted=False, dtype=torch.float32, requires_grad=True),
        lambda: bag_inputs(lengths=(), requires_grad=True),  # B = 0
        lambda: bag_inputs(lengths=(0, 0), weighted=False),  # only empty bags
    ],
    "sid_pieces": [
        lambda: sid_inputs(),
        lambda: sid_inputs(id_dtype=torch.int32, id_offset=2),
        lambda: sid_inputs(lengths=()),  # B = 0
        lambda: sid_inputs(lengths=(0, 3, 0)),
    ],
    "hashed_embedding_bag_backward": [
        lambda: _backward_inputs("sum", True),
        lambda: _backward_inputs("mean", False),
    ],
}

# differentiable op name -> (function of the differentiable tensors, inputs) for torch.autograd.gradcheck
GRADCHECK_CASES: dict[str, list[Callable[[], tuple[Callable, tuple]]]] = {}


def _heb_gradcheck(mode: str, weighted: bool, lengths=(2, 0, 3, 1)):
    def make():
        weight, values, offsets, fi, coeff, rows, mode_, psw = bag_inputs(lengths=lengths, mode=mode, weighted=weighted, requires_grad=True)
        if weighted:
            fn = lambda w, p: torch.ops.recsys_emb.hashed_embedding_bag(w, values, offsets, fi, coeff, rows, mode_, p)  # noqa: E731
            return fn, (weight, psw)
        fn = lambda w: torch.ops.recsys_emb.hashed_embedding_bag(w, values, offsets, fi, coeff, rows, mode_, None)  # noqa: E731
        return fn, (weight,)

    return make


GRADCHECK_CASES["hashed_embedding_bag"] = [
    _heb_gradcheck("sum", True),
    _heb_gradcheck("mean", True),
    _heb_gradcheck("sum", False),
    _heb_gradcheck("mean", False, lengths=(3, 3, 0)),
]
