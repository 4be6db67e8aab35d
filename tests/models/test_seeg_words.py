"""``seeg-words`` (Du-IN): shapes, the paper's size, subject folding, ONNX, pretraining, learning.

Tolerances: inference module vs softmax of the eval-mode network, atol 1e-5 (same float32
ops; seen ~1e-8); ONNX Runtime vs torch, rtol 1e-4 + atol 1e-6 (seen ~1e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from rtbci.models import seeg_words  # noqa: E402
from rtbci.models.runtimes import export_onnx  # noqa: E402
from rtbci.models.seeg_words import HPARAMS, SMALL, DuIN, pretrain, training_loss  # noqa: E402

SRATE, C, T, N_WORDS = 1000.0, 16, 1000, 4
PAPER_PARAMS = 4.38e6  # Du-IN, 16 channels, 61 words, 4000-sample windows (params file)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(n_subjects: int = 3, n_outputs: int = N_WORDS, seed: int = 0) -> DuIN:
    torch.manual_seed(seed)
    return DuIN(C, T, n_outputs, srate=SRATE, n_subjects=n_subjects, **SMALL)


def words(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Toy 4-word task: word k is a 40 Hz burst on channels 4k…4k+3 over white noise (µV),
    phase-locked to the window (within 0.5 rad): Du-IN's tokenizer is affine, so its words
    are evoked responses, not bursts of random phase."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_WORDS, n)
    t = np.arange(T) / SRATE
    x = rng.standard_normal((n, T, C)) * 20.0
    for i, k in enumerate(labels):
        phase = rng.uniform(0, 0.5)
        x[i, :, 4 * k:4 * k + 4] += 40.0 * np.sin(2 * np.pi * 40.0 * t + phase)[:, None]
    return x.astype(np.float32), labels


def shared_source(n: int, seed: int = 0) -> np.ndarray:
    """Unlabelled toy sEEG: one 2 or 5 Hz source of random phase, mixed into all channels."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) / SRATE
    freq = rng.choice([2.0, 5.0], size=(n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    source = np.sin(2 * np.pi * freq * t[:, None] + phase)
    return (rng.standard_normal(C) * source + 0.1 * rng.standard_normal((n, T, C))).astype(
        np.float32)


def randomise(model: DuIN) -> DuIN:
    """Distinct subject maps and non-trivial BatchNorm statistics."""
    with torch.no_grad():
        model.subject_block.weight.add_(0.3 * torch.randn_like(model.subject_block.weight))
        model.subject_block.bias.normal_()
        model.train()
        model(torch.randn(8, T, C) * 3.0 + 1.0, torch.arange(8) % 3)
    return model


def test_shapes_and_tokens():
    model = small_model()
    x = torch.randn(5, T, C)
    assert model(x, torch.tensor([0, 1, 2, 0, 1])).shape == (5, N_WORDS)
    assert model(x).shape == (5, N_WORDS)
    assert model.tokens(x).shape == (5, T // 100, 8 * 10)  # 10 patches × (8 filters × 10 steps)
    assert model.inference_module(1)(x[:1]).shape == (1, N_WORDS)


def test_paper_size():
    """4,390,157 parameters with the params file's 4000-sample window and 10 subjects."""
    model = DuIN(16, 4000, 61, srate=SRATE, n_subjects=10)
    count = sum(p.numel() for p in model.parameters())
    assert count == 4_390_157
    assert abs(count - PAPER_PARAMS) / PAPER_PARAMS < 0.005
    assert model.d_model == 160 and model.n_tokens == 40
    assert sum(p.numel() for p in small_model().parameters()) < 300_000


def test_window_must_hold_whole_patches():
    with pytest.raises(ValueError, match="patch_len"):
        DuIN(C, 1050, N_WORDS, srate=SRATE, **SMALL)
    with pytest.raises(TypeError, match="unknown"):
        DuIN(C, T, N_WORDS, srate=SRATE, d_modle=64)


def test_zscore_per_window_and_channel():
    x = torch.randn(2, T, C) * 1e-4 + 3e-3  # volts with an offset
    x[..., -1] = 0.0  # a zero-padded channel
    z = seeg_words.zscore(x)
    torch.testing.assert_close(z[..., :-1].mean(1), torch.zeros(2, C - 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[..., :-1].std(1, unbiased=False), torch.ones(2, C - 1),
                               atol=1e-4, rtol=0)
    assert torch.all(z[..., -1] == 0)


def test_unseen_subject_uses_mean_map():
    model = randomise(small_model()).eval()
    x = torch.randn(3, T, C)
    block = model.subject_block
    expected = x @ block.weight.mean(0).T + block.bias.mean(0)
    torch.testing.assert_close(block(x, None), expected)
    twin = small_model(n_subjects=1)
    twin.load_state_dict({**model.state_dict(),
                          "subject_block.weight": block.weight.mean(0, keepdim=True),
                          "subject_block.bias": block.bias.mean(0, keepdim=True)})
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x, torch.zeros(3, dtype=torch.long)))


@pytest.mark.parametrize("subject", [1, None])
def test_inference_module_folds_subject(subject):
    model = randomise(small_model())
    model.train()
    module = model.inference_module(subject)
    assert model.training and not module.training
    assert not any("subject_block" in name for name, _ in module.named_parameters())
    x = torch.randn(1, T, C) * 50.0
    with torch.no_grad():
        probs = module(x)
        ids = None if subject is None else torch.tensor([subject])
        expected = torch.softmax(model.eval()(x, ids), dim=-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert abs(float(probs.sum()) - 1.0) < 1e-5


def test_onnx_matches_torch():
    module = randomise(small_model()).inference_module(2)
    model = export_onnx(module, (1, T, C), "seeg-words")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, T, C)).astype(np.float32) * 30.0
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_pretrain_lowers_both_losses_then_fine_tunes():
    model = small_model(n_subjects=2)
    x = shared_source(64)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    tokenizer_before = model.tokenizer.convs[0].weight.detach().clone()
    seen = []
    result = pretrain(model, x, epochs=4, seed=0, progress=lambda *a: seen.append(a),
                      subjects=np.arange(64) % 2, batch_size=8, lr=3e-3)
    assert len(result["vq_loss"]) == len(result["mae_loss"]) == 4
    assert result["vq_loss"][-1] < 0.8 * result["vq_loss"][0]  # seen 0.37-0.54 over seeds
    assert result["mae_loss"][-1] < 0.85 * result["mae_loss"][0]  # seen 0.67-0.77 over seeds
    assert 0.0 < result["code_usage"] <= 1.0
    assert [s for s, *_ in seen] == ["vq"] * 4 + ["mae"] * 4
    assert not torch.equal(model.tokenizer.convs[0].weight, tokenizer_before)
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, head_before[key])
    assert set(model.state_dict()) == set(small_model(n_subjects=2).state_dict())
    words_x, labels = words(64)
    losses = fine_tune(model, words_x, labels, steps=12)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def fine_tune(model: DuIN, x: np.ndarray, labels: np.ndarray, steps: int,
              lr: float = 1e-3, batch: int = 16) -> list[float]:
    """Adam on random batches through :func:`training_loss`; the loss per step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    rng = np.random.default_rng(0)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), batch, replace=False))
        loss = training_loss(model, xt[idx], yt[idx], None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_learns_toy_words():
    model = small_model()
    x, labels = words(96, seed=1)
    fine_tune(model, x, labels, steps=30, lr=3e-3)
    test_x, test_labels = words(64, seed=2)
    with torch.no_grad():
        predicted = model.eval()(torch.from_numpy(test_x)).argmax(-1).numpy()
    assert np.mean(predicted == test_labels) > 0.7  # chance 0.25; seen 0.95-1.0 over seeds 0-4


def test_paper_hparams_are_the_papers():
    assert HPARAMS["conv_filters"] == (128, 128, 16) and HPARAMS["conv_kernels"] == (19, 3, 3)
    assert (HPARAMS["n_blocks"], HPARAMS["n_heads"], HPARAMS["d_head"]) == (8, 8, 64)
    assert HPARAMS["codebook_size"] == 2048 and HPARAMS["attn_dropout"] == 0.2
