"""The OptEmbed search (Lyu et al., CIKM 2022): supernet training, then evolutionary search over dims.

1. supernet: ``supernet_steps`` steps training tables, dense network and the per-field thresholds
   together (loss ``BCE + reg * sum exp(-t)``), each (sample, field) with a prefix dim drawn
   uniformly from the candidates;
2. evolution over per-field dims, fitness = validation AUC of the supernet with those dims fixed (and
   the learnt row masks): a random initial population of ``keep + mutations + crossovers``; each
   generation keeps the ``keep`` best unchanged (elites), adds mutations of elites (each field redrawn
   with probability ``mutation_prob``) and single-point crossovers of two distinct elites with the cut
   over FIELDS in ``[1, F-1]``; candidates over the optional ``budget`` are redrawn;
3. the best candidate fixes the dims; ``derive_tables`` + retrain follow (search/cli.py).

Reference-code bugs fixed here (github.com/fuyuanlyu/OptEmbed, evolution.py; docs/techniques/optembed.md):
the crossover cut point was drawn in ``[1, latent_dim]`` instead of over the fields; mutation
changed the parent tensors in place, so elites and the recorded best candidate were corrupted;
mutation could never produce the smallest dim (drawn from ``[1, latent_dim)`` while indices start at
0); crossover parents could coincide.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from recsys_emb.console import tqdm

from recsys_emb.modules.compact import FBGEMM_DIM_MULTIPLE, round_up
from recsys_emb.modules.optembed import OptEmbedEmbeddingBagCollection, OptEmbedSearchConfig
from recsys_emb.search.common import SearchSetup, make_optimizer, set_trainable
from recsys_emb.utils import log

Candidate = tuple[int, ...]  # one dim per field, in module.features order


def train_supernet(setup: SearchSetup, sc: OptEmbedSearchConfig, opts: list[torch.optim.Optimizer], first: int = 0,
                   writer: Any = None, progress: bool = True, on_step: Callable[[int], None] | None = None) -> None:
    module: OptEmbedEmbeddingBagCollection = setup.embedding
    module.set_field_dims(None)
    setup.model.train()
    for params in (setup.table_params, setup.dense_params, setup.technique_params):
        set_trainable(params, True)
    data = setup.train_batches(first)
    for step in tqdm(range(first, sc.supernet_steps), desc="optembed supernet", disable=not progress, leave=False):
        for o in opts:
            o.zero_grad()
        loss, _ = setup.model(next(data))
        loss.backward()
        for o in opts:
            o.step()
        if writer is not None and (step + 1) % max(1, setup.cfg.train.log_every_steps) == 0:
            writer.add_scalar("search/supernet_loss", float(loss.detach()), step + 1)
            for f, frac in kept_fractions(module).items():
                writer.add_scalar(f"search/kept_rows/{f}", frac, step + 1)
            for i, f in enumerate(module.features):
                writer.add_scalar(f"search/threshold/{f}", float(module.threshold[i].detach()), step + 1)
        if on_step is not None:
            on_step(step + 1)


@torch.no_grad()
def kept_fractions(module: OptEmbedEmbeddingBagCollection) -> dict[str, float]:
    return {f: float(module.kept_rows(f).float().mean()) for f in module.features}


def candidate_cost(module: OptEmbedEmbeddingBagCollection, cand: Candidate, kept: dict[str, int],
                   multiple: int = FBGEMM_DIM_MULTIPLE) -> float:
    """Fraction of the full tables' bytes the DERIVED tables of a candidate take.

    ``sum_f kept_rows_f * min(ceil_multiple(d_f), D_f) / sum_f V_f * D_f``: dims are counted as
    ``derive_tables`` will store them (rounded up to a multiple of 4 for FBGEMM), so a ``budget`` of
    0.5 guarantees real tables at least 2x smaller. Counting the unrounded ``d_f`` (the paper's
    parameter count) under-counts the real bytes by up to ``3 * kept_rows_f`` values per field.
    """
    full = sum(module.vocab[f] * module.dims[f] for f in module.features)
    stored = sum(kept[f] * (min(round_up(d, multiple), module.dims[f]) if d > 0 else 0) for f, d in zip(module.features, cand))
    return stored / max(full, 1)


class Evolution:
    """Evolutionary search state: population, fitness cache, best-so-far (all copies, never aliased)."""

    def __init__(self, module: OptEmbedEmbeddingBagCollection, sc: OptEmbedSearchConfig, fitness: Callable[[Candidate], float],
                 seed: int = 0) -> None:
        self.module, self.sc, self.fitness_fn = module, sc, fitness
        self.rng = random.Random(seed)
        self.choices = [module.candidates(f) for f in module.features]
        self.kept = {f: int(module.kept_rows(f).sum()) for f in module.features}
        self.cache: dict[Candidate, float] = {}
        self.best: tuple[Candidate, float] | None = None
        self.history: list[dict[str, float]] = []
        self.population_size = sc.keep + sc.mutations + sc.crossovers
        smallest = candidate_cost(module, tuple(min(c) for c in self.choices), self.kept)
        if sc.budget is not None and smallest > sc.budget:
            raise ValueError(
                f"optembed search.budget={sc.budget} is below the smallest reachable cost {smallest:.4f} "
                f"(smallest candidate dims, rounded up to {FBGEMM_DIM_MULTIPLE}, on the kept rows): raise the budget"
            )

    def fits(self, cand: Candidate) -> bool:
        return self.sc.budget is None or candidate_cost(self.module, cand, self.kept) <= self.sc.budget

    def _valid(self, make: Callable[[], Candidate], tries: int = 50) -> Candidate:
        for _ in range(tries):
            cand = make()
            if self.fits(cand):
                return cand
        # fall back to the smallest dims, which the budget admits (checked in __init__)
        return tuple(min(c) for c in self.choices)

    def random_candidate(self) -> Candidate:
        return self._valid(lambda: tuple(self.rng.choice(c) for c in self.choices))

    def mutate(self, parent: Candidate) -> Candidate:
        def make() -> Candidate:
            return tuple(self.rng.choice(c) if self.rng.random() < self.sc.mutation_prob else d for d, c in zip(parent, self.choices))
        return self._valid(make)

    def crossover(self, a: Candidate, b: Candidate) -> Candidate:
        fields = len(a)
        if fields < 2:
            return a
        cut = self.rng.randint(1, fields - 1)  # over FIELDS; both parents contribute
        return self._valid(lambda: a[:cut] + b[cut:])

    def score(self, cand: Candidate) -> float:
        if cand not in self.cache:
            self.cache[cand] = self.fitness_fn(cand)
        return self.cache[cand]

    def step(self, population: list[Candidate]) -> list[Candidate]:
        """Score, record the best, and return the next population (same size)."""
        ranked = sorted(population, key=self.score, reverse=True)
        top = ranked[0]
        if self.best is None or self.score(top) > self.best[1]:
            self.best = (tuple(top), self.score(top))
        self.history.append({"best": self.best[1], "generation_best": self.score(top), "generation_worst": self.score(ranked[-1])})
        elites = ranked[: self.sc.keep]
        children = [self.mutate(self.rng.choice(elites)) for _ in range(self.sc.mutations)]
        for _ in range(self.sc.crossovers):
            if len(elites) >= 2:
                a, b = self.rng.sample(elites, 2)
            else:
                a = b = elites[0]
            children.append(self.crossover(a, b))
        return list(elites) + children

    def run(self, generations: int, progress: bool = True, writer: Any = None) -> tuple[Candidate, float]:
        population = [self.random_candidate() for _ in range(self.population_size)]
        for g in tqdm(range(generations), desc="optembed evolution", disable=not progress, leave=False):
            population = self.step(population)
            assert len(population) == self.population_size
            if writer is not None:
                writer.add_scalar("search/evolution_best_auc", self.history[-1]["best"], g + 1)
        # score the final population too
        for cand in population:
            if self.score(cand) > self.best[1]:  # type: ignore[index]
                self.best = (tuple(cand), self.score(cand))
        assert self.best is not None
        return self.best


def run(setup: SearchSetup, sc: OptEmbedSearchConfig, state: dict[str, Any] | None = None, writer: Any = None,
        progress: bool = True, checkpoint: Callable[[dict[str, Any]], None] | None = None, every: int = 0) -> dict[str, Any]:
    """Supernet (resumable from ``state``) + evolution; leaves the best dims fixed on the module."""
    module: OptEmbedEmbeddingBagCollection = setup.embedding
    tc = setup.cfg.train
    opts = [
        make_optimizer(list(setup.table_params.values()), tc.embedding_optimizer),
        make_optimizer(list(setup.dense_params.values()), tc.dense_optimizer),
        torch.optim.Adam(list(setup.technique_params.values()), lr=sc.threshold_lr),
    ]
    done = 0
    if state is not None:
        setup.model.load_state_dict(state["model"])
        for o, s in zip(opts, state["opts"]):
            o.load_state_dict(s)
        done = int(state["step"])
        log(f"[search] resumed OptEmbed supernet at step {done}")

    def hook(step: int) -> None:
        if checkpoint is not None and every and step % every == 0:
            checkpoint({"phase": "supernet", "step": step, "model": setup.model.state_dict(), "opts": [o.state_dict() for o in opts]})

    train_supernet(setup, sc, opts, done, writer, progress, hook)
    set_trainable(setup.technique_params, False)
    setup.model.eval()
    supernet_valid = setup.evaluate("valid")

    def fitness(cand: Candidate) -> float:
        module.set_field_dims(dict(zip(module.features, cand)))
        return setup.evaluate("valid", max_rows=sc.eval_rows)["auc"]

    evo = Evolution(module, sc, fitness, seed=tc.seed)
    best, best_auc = evo.run(sc.generations, progress, writer)
    module.set_field_dims(dict(zip(module.features, best)))
    searched = setup.evaluate("valid")
    setup.model.train()
    log(f"[search] OptEmbed: best dims {dict(zip(module.features, best))} (search auc {best_auc:.5f}); valid auc {searched['auc']:.5f}")
    return {
        "field_dims": dict(zip(module.features, best)),
        "kept_row_fraction": kept_fractions(module),
        "thresholds": {f: float(module.threshold[i]) for i, f in enumerate(module.features)},
        "valid_supernet": supernet_valid,
        "valid_searched": searched,
        "evolution": evo.history,
        "candidate_cost": candidate_cost(module, best, evo.kept),
    }
