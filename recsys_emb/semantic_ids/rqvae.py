"""RQ-VAE: an MLP autoencoder whose latent is quantised by L residual codebooks of K codes.

Paper: Rajput et al., "Recommender Systems with Generative Retrieval" (TIGER, NeurIPS 2023), which
builds on residual vector quantisation (Zeghidour et al., SoundStream, 2021) and the VQ-VAE
objective (van den Oord et al., 2017). Used here, as in Singh et al., "Better Generalization with
Semantic IDs" (RecSys 2024), to give items codes that serve as RANKING features.

Shapes: N items (batch), D input dim, E latent dim, L levels, K codes per level.

Forward pass: ``z = encoder(x)`` (N, E); ``r_0 = z``; for each level ``c_l = argmin_k ||r_l - e_{l,k}||``
and ``r_{l+1} = r_l - e_{l,c_l}``; ``z_q = sum_l e_{l,c_l}``; the decoder sees
``z + sg[z_q - z]`` (straight-through estimator) and returns ``x_hat``.

Loss (conventions, per element means)::

    loss = mse(x_hat, x) + sum_l mse(e_{l,c_l}, sg[r_l]) + beta * sum_l mse(r_l, sg[e_{l,c_l}])

with ``beta = 0.25`` (TIGER / VQ-VAE). The residual ``r_l`` is formed with DETACHED earlier codewords,
so the codebook term trains only the codebooks and the commitment term only the encoder; the
reconstruction term trains encoder and decoder through the straight-through path.

Deviations: the codebooks are plain parameters trained by the optimizer (no EMA updates); k-means
initialisation runs once, level by level, on the residuals of the first training batch; unused
codes are re-seeded with residuals of a batch at each epoch end (see train.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_emb.semantic_ids.config import RQVAEConfig


def nearest_code(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codeword (squared L2) for every row of ``x`` (N, E) in ``codebook`` (K, E).

    Ties go to the lowest index (``argmin`` returns the first minimum), so encoding is deterministic.
    """
    dist = (x * x).sum(1, keepdim=True) - 2.0 * x @ codebook.T + (codebook * codebook).sum(1)[None, :]  # (N, K)
    return dist.argmin(dim=1)


def residual_quantize(z: Tensor, codebooks: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Greedy residual quantisation of ``z`` (N, E) with ``codebooks`` (L, K, E).

    Returns:
        codes (N, L) int64, quantised ``z_q = sum_l e_{l,c_l}`` (N, E) and the residuals
        ``[r_0 = z, r_1, ..., r_L]`` (each (N, E)); ``z_q + r_L == z`` up to rounding.
    """
    residual = z
    residuals = [z]
    codes = []
    quantized = torch.zeros_like(z)
    for level in range(codebooks.shape[0]):
        idx = nearest_code(residual.detach(), codebooks[level].detach())  # (N,)
        chosen = codebooks[level][idx]  # (N, E)
        codes.append(idx)
        quantized = quantized + chosen
        residual = residual - chosen.detach()
        residuals.append(residual)
    return torch.stack(codes, dim=1), quantized, residuals


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means on ``x`` (N, E) -> centroids (k, E).

    Initial centres are ``k`` distinct random rows (with replacement when N < k). Stops when the
    assignment no longer changes; then every non-empty centre is exactly the mean of its points.
    An empty cluster keeps its previous centre.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    if n >= k:
        init = torch.randperm(n, generator=generator)[:k]
    else:
        init = torch.randint(0, n, (k,), generator=generator)
    centres = x[init].clone()  # (k, E)
    assign = None
    for _ in range(iters):
        new_assign = nearest_code(x, centres)  # (N,)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centres).index_add_(0, assign, x)  # (k, E)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)  # (k,)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def mlp(dims: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@dataclass
class RQVAEOutput:
    """One forward pass: reconstruction, latents, codes and the three loss terms."""

    x_hat: Tensor  # (N, D)
    z: Tensor  # (N, E) encoder output
    z_q: Tensor  # (N, E) sum of chosen codewords
    codes: Tensor  # (N, L)
    residuals: list[Tensor]  # L + 1 tensors (N, E)
    recon_loss: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    loss: Tensor


class RQVAE(nn.Module):
    """MLP encoder -> L-level residual quantiser -> MLP decoder.

    Args:
        input_dim: D, the content-embedding dimension.
        config: widths, latent dim, L, K, beta.

    Example::

        model = RQVAE(384, RQVAEConfig(hidden_dims=[128], latent_dim=16, num_levels=3, codebook_size=64))
        out = model(torch.randn(32, 384))   # out.codes: (32, 3)
        out.loss.backward()
    """

    def __init__(self, input_dim: int, config: RQVAEConfig) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.config = config
        dims = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = mlp(dims, config.dropout)
        self.decoder = mlp(dims[::-1], config.dropout)
        self.codebooks = nn.Parameter(torch.randn(config.num_levels, config.codebook_size, config.latent_dim) * 0.1)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def num_levels(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    def forward(self, x: Tensor) -> RQVAEOutput:
        z = self.encoder(x)  # (N, E)
        codes, z_q, residuals = residual_quantize(z, self.codebooks)
        z_ste = z + (z_q - z).detach()  # straight-through: forward value z_q, gradient to z
        x_hat = self.decoder(z_ste)  # (N, D)
        recon = F.mse_loss(x_hat, x)
        codebook = z.new_zeros(())
        commitment = z.new_zeros(())
        for level in range(self.num_levels):
            chosen = self.codebooks[level][codes[:, level]]  # (N, E)
            codebook = codebook + F.mse_loss(chosen, residuals[level].detach())
            commitment = commitment + F.mse_loss(residuals[level], chosen.detach())
        loss = recon + codebook + self.config.beta * commitment
        return RQVAEOutput(x_hat, z, z_q, codes, residuals, recon, codebook, commitment, loss)

    @torch.no_grad()
    def init_codebooks_kmeans(self, x: Tensor, iters: int = 50, generator: torch.Generator | None = None) -> None:
        """Set each level's codebook to k-means centroids of that level's residuals on batch ``x``."""
        residual = self.encoder(x)  # (N, E)
        for level in range(self.num_levels):
            centres = kmeans(residual, self.codebook_size, iters, generator)  # (K, E)
            self.codebooks.data[level] = centres
            residual = residual - centres[nearest_code(residual, centres)]
        self.initialized.fill_(True)

    @torch.no_grad()
    def reset_codes(self, level: int, dead: Tensor, residuals: Tensor, generator: torch.Generator | None = None) -> int:
        """Replace the codes ``dead`` (bool (K,)) of ``level`` with random rows of ``residuals`` (N, E)."""
        idx = torch.nonzero(dead).flatten()
        if idx.numel() == 0 or residuals.shape[0] == 0:
            return 0
        pick = torch.randint(0, residuals.shape[0], (idx.numel(),), generator=generator)
        self.codebooks.data[level, idx] = residuals[pick]
        return int(idx.numel())

    @torch.no_grad()
    def encode(self, x: Tensor, batch_size: int = 8192) -> Tensor:
        """Codes (N, L) of ``x`` (N, D); deterministic (eval mode, no randomness)."""
        was_training = self.training
        self.eval()
        try:
            out = [residual_quantize(self.encoder(x[i:i + batch_size]), self.codebooks)[0]
                   for i in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, self.num_levels), dtype=torch.long)
