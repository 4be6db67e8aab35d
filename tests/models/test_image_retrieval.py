"""image-retrieval: sizes, whitening, folding, ONNX export, uncertainty weights, zero-shot."""

import numpy as np
import onnx
import pytest
import torch

from rtbci.models.contrastive import clip_loss, retrieval_metrics
from rtbci.models.image_retrieval import (
    HPARAMS,
    SMALL,
    TSCONV_HPARAMS,
    ImageRetrievalNet,
    pooled_covariance,
    training_loss,
    uncertainty_weights,
)
from rtbci.models.runtimes import export_onnx, load_runtime

ENCODERS = {"ubp": {**SMALL, "encoder": "ubp"}, "tsconv": SMALL}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def correlated_windows(n: int, n_samples: int, n_channels: int, seed: int = 0) -> np.ndarray:
    """Windows in volts with strongly correlated channels and unequal channel variances."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((n_channels, n_channels)) + 2 * np.eye(n_channels)
    sources = rng.standard_normal((n, n_samples, n_channels))
    return (1e-5 * sources @ mixing + 3e-6).astype(np.float32)


def test_parameter_counts_at_paper_sizes():
    c, t, d = 63, 250, 1024
    ubp = ImageRetrievalNet(c, t, d, srate=250.0, **HPARAMS)
    # Linear (C·T → d), residual Linear (d → d), LayerNorm, logit scale: no paper count given
    assert n_params(ubp) == (c * t + 1) * d + (d + 1) * d + 2 * d + 1 == 17_180_673
    tsconv = ImageRetrievalNet(c, t, d, srate=250.0, **TSCONV_HPARAMS)
    assert n_params(tsconv) == pytest.approx(2.63e6, rel=0.005)  # NICE's 2.63 M
    assert tsconv.features.n_features == 40 * 36  # NICE's 1440 features


def test_small_sizes_are_small_and_shapes_hold():
    model = ImageRetrievalNet(17, 250, 64, srate=250.0, **SMALL)
    assert n_params(model) < 100_000
    x = torch.randn(5, 250, 17)
    assert model(x).shape == (5, 64)
    assert model.inference_module()(x[:1]).shape == (1, 64)
    with pytest.raises(ValueError, match="unknown encoder 'eegnet'"):
        ImageRetrievalNet(17, 250, 64, srate=250.0, encoder="eegnet")


def test_whitening_makes_the_pooled_training_covariance_identity():
    windows = correlated_windows(40, 60, 6)
    model = ImageRetrievalNet(6, 60, 8, srate=250.0, **{**HPARAMS, "shrinkage": 0.0})
    assert torch.equal(model.whiten, torch.eye(6))  # identity before fitting
    model.fit_input(windows)
    assert {"whiten", "input_mean"} <= set(model.state_dict())
    white = (torch.from_numpy(windows) - model.input_mean) @ model.whiten
    np.testing.assert_allclose(pooled_covariance(white.numpy()), np.eye(6), atol=1e-4)
    np.testing.assert_allclose(white.mean(dim=(0, 1)).numpy(), 0, atol=1e-4)
    shrunk = ImageRetrievalNet(6, 60, 8, srate=250.0, **HPARAMS)  # shrinkage 0.01
    shrunk.fit_input(windows)
    white = (torch.from_numpy(windows) - shrunk.input_mean) @ shrunk.whiten
    eigenvalues = np.linalg.eigvalsh(pooled_covariance(white.numpy()))
    assert eigenvalues.min() > 0.5 and eigenvalues.max() < 1.05  # raw: condition number > 100
    assert np.linalg.cond(pooled_covariance(windows)) > 100
    with pytest.raises(ValueError, match=">= 2 windows"):
        model.fit_input(windows[:1])


def trained_a_little(encoder: str, n_channels: int = 9, n_samples: int = 100,
                     n_outputs: int = 16) -> ImageRetrievalNet:
    """A model with fitted whitening and BatchNorm statistics away from their defaults."""
    torch.manual_seed(0)
    model = ImageRetrievalNet(n_channels, n_samples, n_outputs, srate=250.0,
                              **ENCODERS[encoder])
    windows = correlated_windows(32, n_samples, n_channels, seed=1)
    model.fit_input(windows)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn(32, n_outputs)
    for _ in range(3):
        optimizer.zero_grad()
        training_loss(model, torch.from_numpy(windows), target, None).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("encoder", ["ubp", "tsconv"])
def test_inference_module_equals_the_eval_model(encoder):
    model = trained_a_little(encoder)
    compiled = model.inference_module()
    assert not compiled.training
    assert not any(isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm2d))
                   for m in compiled.modules())
    x = torch.from_numpy(correlated_windows(1, 100, 9, seed=2))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoder", ["ubp", "tsconv"])
def test_onnx_export_matches_torch(encoder):
    compiled = trained_a_little(encoder).inference_module()
    ops = {node.op_type for node in onnx.load_from_string(
        export_onnx(compiled, (1, 100, 9), "image-retrieval")).graph.node}
    assert not ops & {"Dropout", "BatchNormalization"}
    runtime = load_runtime("onnxruntime", compiled, (1, 100, 9), name="image-retrieval")
    x = correlated_windows(1, 100, 9, seed=3)
    with torch.no_grad():
        expected = compiled(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime.run(x), expected, rtol=1e-4, atol=1e-5)


def test_uncertainty_weights_favour_matched_pairs():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(16, 32, generator=gen)
    brain = target + 0.3 * torch.randn(16, 32, generator=gen)
    brain[5] = torch.randn(32, generator=gen)  # a pair the brain output does not match
    weights = uncertainty_weights(brain, target)
    assert weights.shape == (16,) and float(weights.mean()) == pytest.approx(1.0)
    assert weights[5] < 0.5 * weights[np.arange(16) != 5].min()
    equal = uncertainty_weights(target, target)  # no spread in agreement: plain CLIP
    torch.testing.assert_close(equal, torch.ones(16), rtol=0, atol=1e-3)


def test_training_loss_is_weighted_clip_loss():
    torch.manual_seed(0)
    model = ImageRetrievalNet(4, 40, 8, srate=100.0, **{**SMALL, "encoder": "ubp"}).eval()
    x, target = torch.randn(6, 40, 4), torch.randn(6, 8)
    brain = model(x)
    weights = uncertainty_weights(brain, target)
    torch.testing.assert_close(training_loss(model, x, target, None),
                               clip_loss(brain, target, model.logit_scale, weights))
    model.uncertainty = False
    torch.testing.assert_close(training_loss(model, x, target, None),
                               clip_loss(brain, target, model.logit_scale))
    assert model.logit_scale.item() == pytest.approx(np.log(1 / 0.07))


@pytest.mark.parametrize("encoder", ["ubp", "tsconv"])
def test_zero_shot_retrieval_of_unseen_items(encoder):
    """Windows are a fixed linear mixture of each item's embedding plus noise; trained on
    items 0..239, the model must retrieve items 240..299 (never seen) among themselves."""
    rng = np.random.default_rng(0)
    n_items, n_train, n_channels, n_samples, dim = 300, 240, 8, 40, 12
    embeddings = rng.standard_normal((n_items, dim)).astype(np.float32)
    mixing = rng.standard_normal((dim, n_samples * n_channels)).astype(np.float32)
    noise = 0.5 * rng.standard_normal((n_items, n_samples * n_channels)).astype(np.float32)
    windows = (embeddings @ mixing + noise).reshape(n_items, n_samples, n_channels)
    torch.manual_seed(0)
    model = ImageRetrievalNet(n_channels, n_samples, dim, srate=100.0, **ENCODERS[encoder])
    model.fit_input(windows[:n_train])
    x, y = torch.from_numpy(windows[:n_train]), torch.from_numpy(embeddings[:n_train])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        for batch in torch.randperm(n_train).split(60):
            optimizer.zero_grad()
            loss = training_loss(model, x[batch], y[batch], None)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    compiled = model.inference_module()
    with torch.no_grad():
        brain = compiled(torch.from_numpy(windows[n_train:])).numpy()
    metrics = retrieval_metrics(brain, embeddings[n_train:], np.arange(n_items - n_train))
    assert metrics["top1"] > 0.6  # chance: 1/60 (seeds 0-2 give 0.9-1.0)
