"""The composition matrix: which technique chains each model family accepts, in one place.

``tests/modules/test_composition.py`` builds and trains every cell of :func:`cells` (and shards each on
2 gloo ranks: every chain of one model per family kind in the default suite, the other cells with
``-m slow``); ``docs/techniques/README.md`` holds :func:`markdown_table`, and a test checks that the
page and this list agree, so the compatibility table cannot drift from what is tested.

Run ``python -m recsys_emb.modules.matrix`` to print the table.
"""

from __future__ import annotations

FAMILIES: dict[str, str] = {  # model -> family kind
    "dlrm": "ctr", "dcnv2": "ctr", "deepfm": "ctr", "lr": "ctr",
    "din": "sequence", "two_stage": "sequence",
    "lightgcn": "graph", "ngcf": "graph", "mf": "graph", "two_tower": "two_tower",
}

CHAINS: dict[str, tuple[str, ...]] = {  # a cell's chain, in order (semantic_ids applies to the item feature only)
    "plain": (),
    "hash": ("hash",),
    "unified": ("unified",),
    "qr": ("qr",),
    "dnis": ("dnis",),
    "optembed": ("optembed",),
    "unified+dnis": ("unified", "dnis"),
    "unified+optembed": ("unified", "optembed"),
    "semantic_ids": ("semantic_ids",),
    "semantic_ids+unified": ("semantic_ids", "unified"),
    "dare": ("dare",),
    "unified+dare": ("unified", "dare"),
    "semantic_ids+dare": ("semantic_ids", "dare"),
    "semantic_ids+unified+dare": ("semantic_ids", "unified", "dare"),
}


def why_not(model: str, chain: str) -> str | None:
    """Why ``chain`` is not a cell of ``model`` (None when it is)."""
    kind, techniques = FAMILIES[model], CHAINS[chain]
    if "dare" in techniques and kind != "sequence":
        return "dare splits attention and representation roles, which only behaviour-sequence rankers have"
    if model == "lr" and {"dnis", "optembed"} & set(techniques):
        return "lr has one weight per id: there is no embedding dim to search"
    if "semantic_ids" in techniques and kind in ("graph", "two_tower"):
        return "not wired yet: the graph data sets carry no item content to assign semantic IDs from"
    return None


def cells() -> list[tuple[str, str]]:
    """Every meaningful (model, chain) cell, in table order."""
    return [(m, c) for m in FAMILIES for c in CHAINS if why_not(m, c) is None]


def markdown_table() -> str:
    """The compatibility table (models x chains; ✓ = built, trained and sharded by the tests)."""
    head = "| model | " + " | ".join(f"`{c}`" for c in CHAINS) + " |"
    rule = "|---|" + "|".join(":-:" for _ in CHAINS) + "|"
    rows = [f"| {m} | " + " | ".join("✓" if why_not(m, c) is None else "—" for c in CHAINS) + " |" for m in FAMILIES]
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    print(markdown_table())
