"""RQ-VAE: residual quantisation, gradients, k-means init, dead-code reset, save/load."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from recsys_emb.semantic_ids.config import RQVAEConfig, RQVAETrainConfig
from recsys_emb.semantic_ids.rqvae import RQVAE, kmeans, nearest_code, residual_quantize
from recsys_emb.semantic_ids.train import assign_ids, evaluate_rqvae, load_rqvae, save_rqvae, train_rqvae


def small_config(levels: int = 3, k: int = 8, latent: int = 4) -> RQVAEConfig:
    return RQVAEConfig(hidden_dims=[16], latent_dim=latent, num_levels=levels, codebook_size=k)


def brute_force_rq(z: np.ndarray, codebooks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: per item and level, scan every code in float64."""
    n, levels = z.shape[0], codebooks.shape[0]
    codes = np.zeros((n, levels), dtype=np.int64)
    residual = z.astype(np.float64).copy()
    for i in range(n):
        for lvl in range(levels):
            best, best_d = 0, np.inf
            for k in range(codebooks.shape[1]):
                d = float(((residual[i] - codebooks[lvl, k]) ** 2).sum())
                if d < best_d:
                    best, best_d = k, d
            codes[i, lvl] = best
            residual[i] -= codebooks[lvl, best]
    return codes, residual


def test_residual_quantization_matches_brute_force_and_identity():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(50, 4, generator=gen)
    books = torch.randn(3, 8, 4, generator=gen)
    codes, zq, residuals = residual_quantize(z, books)
    ref_codes, ref_residual = brute_force_rq(z.numpy(), books.numpy())
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    # residual identity: sum of chosen codewords + final residual == encoder output
    torch.testing.assert_close(zq + residuals[-1], z, atol=1e-5, rtol=0)
    np.testing.assert_allclose(residuals[-1].numpy(), ref_residual, atol=1e-5)
    chosen = sum(books[lvl][codes[:, lvl]] for lvl in range(3))
    torch.testing.assert_close(zq, chosen)


def test_one_level_is_a_vq_vae():
    torch.manual_seed(0)
    model = RQVAE(6, small_config(levels=1))
    x = torch.randn(20, 6)
    out = model(x)
    z = model.encoder(x)
    expected = ((z[:, None, :] - model.codebooks[0][None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(out.codes[:, 0].numpy(), expected.detach().numpy())
    torch.testing.assert_close(out.z_q, model.codebooks[0][expected])


def test_straight_through_gradient_reaches_encoder_and_not_codebooks():
    torch.manual_seed(0)
    model = RQVAE(6, small_config())
    out = model(torch.randn(16, 6))
    out.recon_loss.backward()
    enc_grad = sum(float(p.grad.abs().sum()) for p in model.encoder.parameters())
    assert enc_grad > 0, "reconstruction gradient must pass the quantiser to the encoder (STE)"
    assert model.codebooks.grad is None or float(model.codebooks.grad.abs().sum()) == 0.0
    # the STE gradient w.r.t. z equals the gradient w.r.t. the decoder input
    z = model.encoder(torch.randn(5, 6)).detach().requires_grad_(True)
    _, zq, _ = residual_quantize(z, model.codebooks)
    z_ste = z + (zq - z).detach()
    model.decoder(z_ste).sum().backward()
    zq_leaf = zq.detach().requires_grad_(True)
    model.decoder(zq_leaf).sum().backward()
    torch.testing.assert_close(z.grad, zq_leaf.grad)


def test_codebook_and_commitment_gradients_go_where_they_should():
    torch.manual_seed(0)
    model = RQVAE(6, small_config())
    x = torch.randn(16, 6)
    out = model(x)
    out.codebook_loss.backward()
    assert float(model.codebooks.grad.abs().sum()) > 0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.encoder.parameters())
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.commitment_loss.backward()
    assert model.codebooks.grad is None or float(model.codebooks.grad.abs().sum()) == 0
    assert sum(float(p.grad.abs().sum()) for p in model.encoder.parameters()) > 0
    assert all(p.grad is None for p in model.decoder.parameters())
    # loss = recon + codebook + beta * commitment with beta = 0.25
    out = model(x)
    torch.testing.assert_close(out.loss, out.recon_loss + out.codebook_loss + 0.25 * out.commitment_loss)


def test_kmeans_centroids_are_means_of_their_points():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 3, generator=gen) + c for c in (torch.tensor([5.0, 0, 0]), torch.tensor([-5.0, 0, 0]))])
    centres = kmeans(x, 4, iters=100, generator=gen)
    assign = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    for k in range(4):
        pts = x[assign == k]
        if len(pts):
            torch.testing.assert_close(centres[k], pts.mean(0), atol=1e-5, rtol=0)


def test_kmeans_init_places_each_level_on_its_residuals():
    torch.manual_seed(0)
    model = RQVAE(6, small_config(levels=2, k=4))
    x = torch.randn(64, 6)
    model.init_codebooks_kmeans(x, iters=100, generator=torch.Generator().manual_seed(1))
    assert bool(model.initialized)
    with torch.no_grad():
        residual = model.encoder(x)
        for lvl in range(2):
            book = model.codebooks[lvl]
            assign = ((residual[:, None] - book[None]) ** 2).sum(-1).argmin(1)
            for k in range(4):
                pts = residual[assign == k]
                assert len(pts) > 0
                torch.testing.assert_close(book[k], pts.mean(0), atol=1e-5, rtol=0)
            residual = residual - book[assign]


def test_dead_codes_are_reset_to_batch_residuals():
    torch.manual_seed(0)
    model = RQVAE(6, small_config(levels=1, k=4))
    with torch.no_grad():
        model.codebooks[0, 3] = 1e4  # never the nearest code
    x = torch.randn(32, 6)
    model.train()
    _, hist = train_rqvae(x.numpy(), model.config, RQVAETrainConfig(epochs=2, batch_size=32, kmeans_init=False,
                                                                     progress=False, lr=1e-9), model=model)
    assert hist[0]["dead_codes_reset"][0] >= 1
    assert hist[0]["usage"][0] < 1.0
    with torch.no_grad():
        z = model.encoder(x)
    # the far-away code now sits on (close to) an encoder output of the data
    d = ((z - model.codebooks[0, 3].detach()) ** 2).sum(1).min()
    assert float(d) < 1e-2


def test_training_reduces_loss_and_save_load_gives_identical_codes(tmp_path):
    gen = np.random.default_rng(0)
    centres = gen.normal(size=(10, 12))
    x = (centres[gen.integers(0, 10, 300)] + 0.05 * gen.normal(size=(300, 12))).astype(np.float32)
    model, hist = train_rqvae(x, small_config(levels=2, k=8, latent=6), RQVAETrainConfig(epochs=15, batch_size=100, progress=False))
    assert hist[-1]["recon"] < hist[0]["recon"]
    keys = [f"i{i}" for i in range(300)]
    sids = assign_ids(model, x, keys)
    assert len({tuple(r) for r in sids.codes.tolist()}) == 300
    save_rqvae(model, tmp_path / "m.pt")
    loaded = load_rqvae(tmp_path / "m.pt")
    np.testing.assert_array_equal(assign_ids(loaded, x, keys).codes, sids.codes)
    np.testing.assert_array_equal(model.encode(torch.from_numpy(x)).numpy(), model.encode(torch.from_numpy(x)).numpy())
    metrics = evaluate_rqvae(loaded, x)
    assert set(metrics) >= {"recon_mse", "collision_rate", "unique_id_ratio", "usage", "perplexity"}


def test_collapse_is_reported():
    x = np.ones((64, 5), dtype=np.float32)  # identical items: one code per level is all that can be used
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, hist = train_rqvae(x, small_config(levels=2, k=16), RQVAETrainConfig(epochs=2, batch_size=64, progress=False,
                                                                                 reset_dead_codes=False))
    assert hist[-1]["collapsed_levels"] == [0, 1]
    assert any("collapse" in str(w.message) for w in caught)


def test_nearest_code_ties_go_to_lowest_index():
    book = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert nearest_code(torch.tensor([[1.0, 0.0]]), book).tolist() == [0]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        train_rqvae(np.zeros((0, 3), np.float32), small_config(), RQVAETrainConfig(progress=False))
