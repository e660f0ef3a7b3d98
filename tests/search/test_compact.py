"""The compact module: id remap (any bag lengths), layout files, fully pruned features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.search.compact import CompactEmbeddingBagCollection, CompactLayout, PartSpec, load_layout, save_layout


def layout() -> CompactLayout:
    # feature a (vocab 6, dim 8): part 0 = ids {0, 2} on columns 0..3, part 1 = ids {3, 5} on columns 4..7
    # ids 1 and 4 pruned. feature b (vocab 3, dim 4): pruned entirely.
    codes_a = torch.tensor([0 * 2 + 0, -1, 1 * 2 + 0, 0 * 2 + 1, -1, 1 * 2 + 1], dtype=torch.int32)
    return CompactLayout(
        feature_dims=[("a", 8), ("b", 4)],
        parts=[PartSpec("a", 0, 2, (0, 1, 2, 3)), PartSpec("a", 1, 2, (4, 5, 6, 7))],
        codes={"a": codes_a, "b": torch.full((3,), -1, dtype=torch.int32)},
    )


def reference(module: CompactEmbeddingBagCollection, values: list[list[int]]) -> torch.Tensor:
    """Sum pooling written out: each kept id adds its part row into its part's columns."""
    w0 = module.ebc.embedding_bags["t_a@0"].weight.detach()
    w1 = module.ebc.embedding_bags["t_a@1"].weight.detach()
    where = {0: (w0, 0, [0, 1, 2, 3]), 2: (w0, 1, [0, 1, 2, 3]), 3: (w1, 0, [4, 5, 6, 7]), 5: (w1, 1, [4, 5, 6, 7])}
    out = torch.zeros(len(values), 12)
    for row, bag in enumerate(values):
        for i in bag:
            if i in where:
                w, r, cols = where[i]
                out[row, cols] += w[r]
    return out


def test_multi_id_bags_remap_and_scatter_like_the_reference() -> None:
    torch.manual_seed(0)
    m = CompactEmbeddingBagCollection(layout())
    bags_a = [[0, 3, 1], [], [4], [2, 2, 5]]
    bags_b = [[1], [0, 2], [], [1]]
    values = torch.tensor([i for bag in bags_a + bags_b for i in bag])
    lengths = torch.tensor([len(b) for b in bags_a + bags_b])
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], values, lengths)
    out = m(kjt)
    assert out.keys() == ["a", "b"] and out.values().shape == (4, 12)
    torch.testing.assert_close(out.values(), reference(m, bags_a))


def test_layout_roundtrip_and_errors(tmp_path: Path) -> None:
    save_layout(layout(), tmp_path / "layout.pt")
    loaded = load_layout(tmp_path / "layout.pt")
    assert loaded.parts == layout().parts and loaded.feature_dims == layout().feature_dims
    assert torch.equal(loaded.codes["a"], layout().codes["a"])
    assert loaded.embedding_bytes() == (2 * 4 + 2 * 4) * 4
    bad = layout()
    bad.parts[1] = PartSpec("a", 1, 2, (4, 5, 6, 8))
    with pytest.raises(ValueError, match="bad columns"):
        bad.validate()
    with pytest.raises(FileNotFoundError):
        load_layout(tmp_path / "missing.pt")


def test_out_of_range_ids_are_reported() -> None:
    m = CompactEmbeddingBagCollection(layout())
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([9, 0]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="feature 'a'"):
        m(kjt)


def test_modules_do_not_import_search() -> None:
    """Layering: ``recsys_emb/modules/`` never imports ``recsys_emb/search/`` (nor ``distributed/``)."""
    import ast

    import recsys_emb.modules
    import recsys_emb.search.compact as shim
    from recsys_emb.modules import compact

    offenders = []
    for path in sorted(Path(recsys_emb.modules.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("recsys_emb.search", "recsys_emb.distributed"))]
    assert offenders == []
    # the old import path still names the same objects
    assert shim.CompactEmbeddingBagCollection is compact.CompactEmbeddingBagCollection and shim.load_layout is compact.load_layout
