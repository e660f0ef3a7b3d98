"""Sharders: stock TorchRec sharders with row-wise enabled on CPU, and the generic wrapper sharder.

* :class:`CPURowWiseEmbeddingBagCollectionSharder` is TorchRec's ``EmbeddingBagCollectionSharder``
  that also offers ``row_wise`` and ``table_row_wise`` when the compute device is the CPU. TorchRec
  lists those two types for CUDA only, so its planner refuses them on CPU, although the sharded
  module itself runs them on CPU with gloo (forward, backward and FBGEMM's fused CPU optimizers
  agree with the unsharded module: tests/distributed/test_parity.py). Nothing else changes.
* :class:`TransformedEmbeddingBagCollectionSharder` shards our
  :class:`~recsys_emb.modules.wrapper.TransformedEmbeddingBagCollection` (pre-lookup transform +
  stock EBC): its tables are planned and sharded exactly as a stock EBC's (same planner options,
  FBGEMM kernels, fused optimizers and checkpoint keys ``<fqn>.ebc.embedding_bags.<table>.weight``),
  and the transform runs on each rank's local input BEFORE the input all-to-all, because row-wise
  sharding buckets ids by their transformed value.

:func:`default_sharders` is what ``recsys_emb.train`` hands to the planner and to
``DistributedModelParallel``: TorchRec's defaults with the two above in place of / next to the stock
EBC sharder.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchrec.distributed.embedding_types import ShardingType
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionContext, EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import Awaitable, LazyAwaitable, ModuleSharder, ParameterSharding, ShardedModule, ShardingEnv
from torchrec.distributed.utils import append_prefix
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection

_CPU_EXTRA_TYPES = [ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]


def _with_cpu_row_wise(types: list[str], compute_device_type: str) -> list[str]:
    if compute_device_type == "cpu":
        types = types + [t for t in _CPU_EXTRA_TYPES if t not in types]
    return types


class CPURowWiseEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """TorchRec's EBC sharder, also offering row_wise / table_row_wise on CPU."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return _with_cpu_row_wise(super().sharding_types(compute_device_type), compute_device_type)


class ShardedTransformedEmbeddingBagCollection(
    ShardedModule[Any, Any, KeyedTensor, EmbeddingBagCollectionContext]
):
    """Sharded twin of :class:`TransformedEmbeddingBagCollection`: transform, then TorchRec's sharded EBC.

    The transform (parameter-free, may hold buffers) is applied to the rank-local KJT inside
    ``input_dist``; input/output distribution, lookup, fused optimizer and state dict are those of
    the stock ``ShardedEmbeddingBagCollection`` held at ``self.ebc``.
    """

    def __init__(
        self,
        module: TransformedEmbeddingBagCollection,
        table_name_to_parameter_sharding: dict[str, ParameterSharding],
        ebc_sharder: EmbeddingBagCollectionSharder,
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> None:
        super().__init__(qcomm_codecs_registry=ebc_sharder.qcomm_codecs_registry)
        transform = module.transform
        if device is not None and any(b.device.type == "meta" for b in transform.buffers()):
            raise ValueError(
                f"{type(transform).__name__} has buffers on the meta device: build the transform's buffers on a real "
                "device (they are small) even when the tables are built on meta"
            )
        self.transform = transform.to(device) if device is not None else transform
        self.ebc = ebc_sharder.shard(
            module.ebc, table_name_to_parameter_sharding, env, device, append_prefix(module_fqn or "", "ebc")
        )

    def create_context(self) -> EmbeddingBagCollectionContext:
        return self.ebc.create_context()

    def input_dist(self, ctx: EmbeddingBagCollectionContext, features: KeyedJaggedTensor) -> Awaitable[Awaitable[Any]]:
        return self.ebc.input_dist(ctx, self.transform(features))

    def compute(self, ctx: EmbeddingBagCollectionContext, dist_input: Any) -> Any:
        return self.ebc.compute(ctx, dist_input)

    def output_dist(self, ctx: EmbeddingBagCollectionContext, output: Any) -> LazyAwaitable[KeyedTensor]:
        return self.ebc.output_dist(ctx, output)

    def compute_and_output_dist(self, ctx: EmbeddingBagCollectionContext, input: Any) -> LazyAwaitable[KeyedTensor]:  # noqa: A002
        return self.ebc.compute_and_output_dist(ctx, input)

    def sharded_parameter_names(self, prefix: str = "") -> Iterator[str]:
        yield from self.ebc.sharded_parameter_names(append_prefix(prefix, "ebc"))

    @property
    def unsharded_module_type(self) -> type[nn.Module]:
        return TransformedEmbeddingBagCollection


class TransformedEmbeddingBagCollectionSharder(ModuleSharder[TransformedEmbeddingBagCollection]):
    """Shards :class:`TransformedEmbeddingBagCollection` by delegating its tables to an EBC sharder.

    Args:
        ebc_sharder: the sharder of the inner EBC (default: :class:`CPURowWiseEmbeddingBagCollectionSharder`
            with ``fused_params``); its sharding types, compute kernels and fused parameters are offered
            to the planner unchanged.
        fused_params: FBGEMM fused parameters for the default inner sharder.
    """

    def __init__(self, ebc_sharder: EmbeddingBagCollectionSharder | None = None, fused_params: dict[str, Any] | None = None) -> None:
        self._ebc_sharder = ebc_sharder or CPURowWiseEmbeddingBagCollectionSharder(fused_params=fused_params)
        super().__init__(qcomm_codecs_registry=self._ebc_sharder.qcomm_codecs_registry)

    @property
    def module_type(self) -> type[TransformedEmbeddingBagCollection]:
        return TransformedEmbeddingBagCollection

    @property
    def fused_params(self) -> dict[str, Any] | None:
        return self._ebc_sharder.fused_params

    def shard(
        self,
        module: TransformedEmbeddingBagCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedTransformedEmbeddingBagCollection:
        return ShardedTransformedEmbeddingBagCollection(module, params, self._ebc_sharder, env, device, module_fqn)

    def shardable_parameters(self, module: TransformedEmbeddingBagCollection) -> dict[str, nn.Parameter]:
        return self._ebc_sharder.shardable_parameters(module.ebc)

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return self._ebc_sharder.sharding_types(compute_device_type)

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
        return self._ebc_sharder.compute_kernels(sharding_type, compute_device_type)

    def storage_usage(self, tensor: torch.Tensor, compute_device_type: str, compute_kernel: str) -> dict[str, int]:
        return self._ebc_sharder.storage_usage(tensor, compute_device_type, compute_kernel)


def default_sharders(fused_params: dict[str, Any] | None = None) -> list[ModuleSharder[nn.Module]]:
    """TorchRec's default sharders, with CPU row-wise for EBCs and our wrapper sharder added."""
    sharders: list[ModuleSharder[nn.Module]] = [
        CPURowWiseEmbeddingBagCollectionSharder(fused_params=fused_params),
        TransformedEmbeddingBagCollectionSharder(fused_params=fused_params),
    ]
    taken = {s.module_type for s in sharders} | {EmbeddingBagCollection}
    sharders += [s for s in get_default_sharders() if s.module_type not in taken]
    return sharders
