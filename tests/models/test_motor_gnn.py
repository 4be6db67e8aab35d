"""The motor-learning GNN: its electrode graph, dense GCN, export and channel importance."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the GNN needs torch")
pytest.importorskip("onnxruntime", reason="the export check runs in onnxruntime")

from rtbci.devices.simulate import get_profile  # noqa: E402
from rtbci.models.motor_gnn import (  # noqa: E402
    MotorGNN,
    channel_importance,
    knn_adjacency,
    normalized_adjacency,
    training_loss,
)
from rtbci.models.runtimes import load_runtime  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
POSITIONS = get_profile("eeg64").positions


def test_knn_graph_joins_neighbours_symmetrically():
    a = knn_adjacency(POSITIONS, 6)
    assert np.array_equal(a, a.T) and np.all(np.diag(a) == 0)
    assert a.sum(axis=1).min() >= 6  # each node keeps its 6 nearest (and gains reverse edges)
    names = list(get_profile("eeg64").ch_names)
    cz = names.index("Cz")
    assert {names[j] for j in np.flatnonzero(a[cz])} >= {"C1", "C2", "FCz", "CPz"}
    assert a[names.index("Fp1"), names.index("O2")] == 0
    with_missing = POSITIONS.copy()
    with_missing[5] = np.nan
    assert knn_adjacency(with_missing, 6)[5].sum() == 0  # no position: no edge


def test_normalized_adjacency_is_symmetric_with_unit_spectral_radius():
    a_hat = normalized_adjacency(knn_adjacency(POSITIONS, 6))
    np.testing.assert_allclose(a_hat, a_hat.T, atol=1e-7)
    assert abs(np.linalg.eigvalsh(a_hat.astype(np.float64)).max() - 1.0) < 1e-5


def test_parameters_shapes_and_onnx_agree_with_torch():
    torch.manual_seed(0)
    model = MotorGNN(64, 250, 2, srate=250.0, positions=POSITIONS)
    assert sum(p.numel() for p in model.parameters()) == 12_090  # 8,058 with readout="mean"
    x = torch.randn(5, 250, 64)
    assert model(x).shape == (5, 2)
    loss = training_loss(model, x, torch.tensor([0, 1, 0, 1, 1]))
    loss.backward()
    assert model.readout.weight.grad is not None
    module = model.inference_module()
    rt = load_runtime("onnxruntime", module, (1, 250, 64), threads=1)  # checks vs torch
    window = np.random.default_rng(0).standard_normal((250, 64)).astype(np.float32)
    out = rt.run(window)
    probabilities = (out[0] if isinstance(out, tuple) else out).reshape(-1)
    with torch.inference_mode():
        expected = module(torch.from_numpy(window[None])).numpy()
    np.testing.assert_allclose(probabilities, expected[0], rtol=1e-4, atol=1e-6)
    assert abs(float(probabilities.sum()) - 1) < 1e-5


def test_importance_points_at_the_channels_that_carry_the_class():
    """Class 1 adds a 10 Hz burst on channels 10-13 only: after training, gradient × input
    puts most of the importance there."""
    rng = np.random.default_rng(0)
    n, t = 200, 250
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, t, 64)).astype(np.float32)
    burst = np.sin(2 * np.pi * 10 * np.arange(t) / 250.0).astype(np.float32)
    x[y == 1, :, 10:14] += 2.0 * burst[:, None]
    torch.manual_seed(0)
    model = MotorGNN(64, t, 2, srate=250.0, positions=POSITIONS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(60):
        idx = torch.randint(0, n, (32,))
        opt.zero_grad()
        training_loss(model, xt[idx], yt[idx]).backward()
        opt.step()
    predicted, importance = channel_importance(model, x[np.flatnonzero(y == 1)[0]])
    assert predicted == 1 and abs(importance.sum() - 1) < 1e-5
    assert importance[10:14].sum() > 0.3  # 4 of 64 channels (6 %) hold most of it
    assert model.training  # left as it was
