"""speech (Défossez et al.'s brain module): sizes, merger, subjects, folding, ONNX, learning."""

import copy

import numpy as np
import pytest
import torch

from rtbci.devices.simulate import get_profile
from rtbci.models.contrastive import clip_loss, retrieval_metrics
from rtbci.models.runtimes import load_runtime
from rtbci.models.speech import (
    HPARAMS,
    SMALL,
    SpeechNet,
    fourier_features,
    prepare,
    project_positions,
    training_loss,
)

SRATE = 120.0
MEG_POSITIONS = get_profile("meg306").positions[::3]  # 102 sensors


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_net(n_channels=102, n_samples=72, n_outputs=16, positions=MEG_POSITIONS,
              n_subjects=3, seed=0):
    torch.manual_seed(seed)
    return SpeechNet(n_channels, n_samples, n_outputs, srate=SRATE, positions=positions,
                     n_subjects=n_subjects, **SMALL)


def windows(n, n_samples=72, n_channels=102, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(
        (n, n_samples, n_channels)).astype(np.float32))


def test_shapes_of_training_and_inference_outputs():
    net = small_net()
    x = windows(4)
    assert net(x, torch.tensor([0, 1, 2, 0])).shape == (4, 16, 72)
    assert net.eval()(x, None).shape == (4, 16, 72)
    assert net.inference_module(1)(x[:1]).shape == (1, 16, 72)
    assert net.inference_module(None, pool=True)(x[:1]).shape == (1, 16)
    assert net.n_baseline == 36  # 0.3 s at 120 Hz
    with pytest.raises(ValueError, match="positions must have shape"):
        small_net(positions=MEG_POSITIONS[:10])
    with pytest.raises(ValueError, match="longer than"):
        small_net(n_samples=30)


def test_parameter_count_at_paper_sizes():
    """~9.6 M with 208 sensors and 1024 outputs (quoted for the paper), for the 27 subjects of the
    Gwilliams MEG dataset; within 1 %."""
    positions = np.random.default_rng(0).standard_normal((208, 3))
    net = SpeechNet(208, 360, 1024, srate=SRATE, positions=positions, n_subjects=27, **HPARAMS)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 9_565_055
    assert abs(n_params - 9.6e6) / 9.6e6 < 0.01
    assert net.heads.shape == (270, 2048) and net.subject_weights.shape == (27, 270, 270)
    dilations = [conv.dilation[0] for conv in net.encoder.convs]
    assert dilations == [1, 2, 4, 8, 16, 1, 2, 4, 8, 16]
    assert sorted(net.encoder.glus) == ["1", "3", "5", "7", "9"]


def test_projection_keeps_nan_rows_and_fills_the_unit_square():
    positions = MEG_POSITIONS.copy()
    positions[5] = np.nan
    xy = project_positions(positions)
    assert np.isnan(xy[5]).all() and np.isfinite(np.delete(xy, 5, axis=0)).all()
    np.testing.assert_allclose(np.nanmin(xy, axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.nanmax(xy, axis=0), 1.0, atol=1e-12)
    # the projection preserves neighbourhoods: each sensor's nearest 3-D neighbour is near in 2-D
    d3 = np.linalg.norm(MEG_POSITIONS[:, None] - MEG_POSITIONS[None], axis=-1)
    np.fill_diagonal(d3, np.inf)
    xy = project_positions(MEG_POSITIONS)
    d2 = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    assert np.median(d2[np.arange(len(d3)), d3.argmin(axis=1)]) < 0.1


def test_fourier_features_follow_the_paper_formula():
    xy = np.array([[0.25, 0.75], [np.nan, np.nan]])
    features = fourier_features(xy, 8)  # 2 frequencies per axis
    phase = 2 * np.pi / 1.4 * np.array([0, 0.95, 0.45, 1.4])  # (fx, fy) = 00, 01, 10, 11
    np.testing.assert_allclose(features[0], np.concatenate([np.cos(phase), np.sin(phase)]),
                               atol=1e-12)
    assert not features[1].any()
    with pytest.raises(ValueError, match="perfect square"):
        fourier_features(xy, 100)


def test_sensors_without_position_get_no_weight():
    positions = MEG_POSITIONS.copy()
    positions[[3, 40]] = np.nan
    weights = small_net(positions=positions).merger_weights().detach()
    assert weights.shape == (32, 102)
    assert (weights[:, [3, 40]] == 0).all()
    assert (np.delete(weights.numpy(), [3, 40], axis=1) > 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(32))


def test_without_positions_the_merger_is_a_free_softmax():
    net = small_net(positions=None)
    assert net.embedding.shape == (102, 102) and net.heads.shape == (32, 102)
    assert (net.merger_weights() > 0).all()
    assert net.train()(windows(2), torch.tensor([0, 1])).isfinite().all()


def test_spatial_dropout_removes_sensors_within_the_radius():
    net = small_net()
    center = torch.tensor([0.5, 0.5])
    weights = net.merger_weights(center).detach()
    near = ((net.positions_2d - center).norm(dim=1) <= 0.2).numpy()
    assert 0 < near.sum() < 102
    assert (weights[:, near] == 0).all() and (weights[:, ~near] > 0).all()


def test_spatial_dropout_acts_in_training_only():
    net = small_net()

    def dead_sensors():
        x = windows(2).requires_grad_()
        net(x, torch.tensor([0, 1])).square().sum().backward()
        return (x.grad.abs().sum(dim=(0, 1)) == 0).numpy()

    torch.manual_seed(1)
    dropped = [dead_sensors() for _ in range(5)]
    assert all(0 < d.sum() < 102 for d in dropped)
    for d in dropped:  # the dropped sensors lie within one disc of radius 0.2
        xy = net.positions_2d[d]
        assert (xy[:, None] - xy[None]).norm(dim=-1).max() <= 0.4 + 1e-6
    net.eval()
    assert not dead_sensors().any()


def test_unseen_subject_uses_the_mean_subject_matrix():
    net = small_net().eval()
    mean_net = copy.deepcopy(net)
    mean_net.subject_weights.data[:] = net.subject_weights.data.mean(dim=0)
    x = windows(2)
    with torch.no_grad():
        torch.testing.assert_close(net(x, None), mean_net(x, torch.tensor([1, 2])))
        assert not torch.allclose(net(x, None), net(x, torch.tensor([1, 1])))


def trained_a_little(net, steps=3):
    """Some steps so that BatchNorm statistics and weights are no longer the defaults."""
    net.fit_input(windows(16).numpy() * 3 + 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(steps):
        x = windows(8, seed=step) * 3 + 1
        loss = training_loss(net, x, torch.randn(8, 16, 72), torch.tensor([0, 1, 2, 0] * 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("subject", [0, 2, None])
def test_folded_inference_module_matches_the_model(subject):
    net = trained_a_little(small_net())
    folded, pooled = net.inference_module(subject), net.inference_module(subject, pool=True)
    index = None if subject is None else torch.tensor([subject])
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    assert folded.spatial.shape == (32, 102)
    for seed in range(3):
        x = windows(1, seed=seed) * 3 + 1
        with torch.no_grad():
            ref = net(x, index)
            torch.testing.assert_close(folded(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max())
            torch.testing.assert_close(pooled(x), ref.mean(dim=-1), rtol=1e-5,
                                       atol=1e-5 * ref.abs().max())


@pytest.mark.parametrize("pool", [False, True])
def test_onnx_export_matches_torch(pool, monkeypatch, tmp_path):
    monkeypatch.setenv("RTBCI_CACHE", str(tmp_path))  # export afresh, leave no cache behind
    net = trained_a_little(small_net())
    module = net.inference_module(1, pool=pool)
    runtime = load_runtime("onnxruntime", module, (1, 72, 102), name="speech", threads=1)
    for seed in range(2):
        x = windows(1, seed=10 + seed) * 3 + 1
        with torch.no_grad():
            ref = module(x).numpy()
        np.testing.assert_allclose(runtime.run(x.numpy()), ref, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref).max())


def test_fit_input_gives_median_zero_and_iqr_one():
    rng = np.random.default_rng(3)
    offsets, gains = rng.uniform(-50, 50, 102), rng.uniform(0.1, 30, 102)
    data = (rng.standard_normal((40, 72, 102)) * gains + offsets).astype(np.float32)
    net = small_net()
    with torch.no_grad():
        before = prepare(torch.from_numpy(data), net.center, net.scale, net.n_baseline, 1e9)
    net.fit_input(data)
    with torch.no_grad():
        scaled = prepare(torch.from_numpy(data), net.center, net.scale, net.n_baseline, 1e9)
    values = scaled.transpose(0, 1).reshape(102, -1).numpy()
    q25, median, q75 = np.percentile(values, [25, 50, 75], axis=1)
    np.testing.assert_allclose(median, 0, atol=1e-4)
    np.testing.assert_allclose(q75 - q25, 1, rtol=1e-4)
    assert before.abs().max() > 20  # identity before fitting
    assert net(torch.from_numpy(data[:2]) * 100, torch.tensor([0, 0])).isfinite().all()


def test_training_loss_pools_time_for_pooled_targets():
    net = small_net().eval()
    x, subject, target = windows(4), torch.tensor([0, 1, 2, 0]), torch.randn(4, 16)
    with torch.no_grad():
        mean_map = net(x, subject).mean(dim=-1)
        torch.testing.assert_close(net.pooled(x, subject), mean_map, rtol=1e-5,
                                   atol=1e-5 * mean_map.abs().max())
        expected = clip_loss(mean_map, target, net.logit_scale, symmetric=False)
        torch.testing.assert_close(training_loss(net, x, target, subject), expected)


def test_learns_a_toy_retrieval_task():
    """Targets are a fixed random linear map of each window's samples; after 30 steps the
    brain maps retrieve held-out targets among 64 far above chance (1/64)."""
    n_channels = 32
    mix = torch.from_numpy(np.random.default_rng(7).standard_normal((n_channels, 16))
                           .astype(np.float32))

    def make(n, seed):
        x = windows(n, n_channels=n_channels, seed=seed)
        return x, torch.einsum("btc,cd->bdt", x, mix)

    net = small_net(n_channels, positions=MEG_POSITIONS[:n_channels], n_subjects=1)
    x_train, y_train = make(256, 1)
    net.fit_input(x_train.numpy())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        idx = torch.randperm(256, generator=gen)[:32]
        loss = training_loss(net, x_train[idx], y_train[idx], None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    x_test, y_test = make(64, 2)
    with torch.no_grad():
        brain = net.eval()(x_test, None).numpy()
    metrics = retrieval_metrics(brain, y_test.numpy(), np.arange(64))
    assert metrics["top1"] > 0.5, metrics
