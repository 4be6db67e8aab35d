"""Parity with the papers' code: the reference implementations' weights, loaded through
rtbci's key mappings, reproduce the references' outputs (fixtures in tests/data/parity/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtbci.errors import RtbciError

torch = pytest.importorskip("torch", reason="the networks need torch")

from rtbci.models import import_weights as iw  # noqa: E402
from rtbci.models import reference_maps as maps  # noqa: E402
from rtbci.models.seeg_words import DuIN  # noqa: E402

DATA = Path(__file__).parents[1] / "data" / "parity"
FIXTURES = {"speech": "brainmagick_simpleconv_small.npz", "seeg-words": "duin_cls_small.npz",
            "image-retrieval": "nice_tsconv.npz"}
SRATE = {"speech": 120.0, "seeg-words": 1000.0, "image-retrieval": 250.0}


def fixture(family: str) -> iw.Fixture:
    return iw.read_fixture(DATA / FIXTURES[family])


def imported(family: str, state: dict | None = None, fx: iw.Fixture | None = None):
    fx = fx or fixture(family)
    layout = iw.layout_rows(fx.extras["positions"]) if family == "speech" else None
    model, _ = iw.import_reference(family, fx.state if state is None else state, fx.config,
                                   fx.input.shape[-1], SRATE[family], layout)
    return model


@pytest.mark.parametrize("family", FIXTURES)
def test_reference_weights_reproduce_the_reference_output(family):
    fx = fixture(family)
    outputs = iw.reference_outputs(family, imported(family, fx=fx), fx)
    assert set(outputs) == ({"output", "output_invalid_case"} if family == "speech"
                            else {"output"})
    for name, got in outputs.items():
        want = fx.output if name == "output" else fx.extras[name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=iw.TOLERANCE, rtol=0)
        assert np.abs(want).max() > 0.1  # outputs of a size that a wrong network would miss


def test_speech_invalid_positions_get_no_weight():
    fx = fixture("speech")
    model = imported("speech", fx=fx)
    model.set_layout(iw.layout_rows(fx.extras["positions_invalid_case"]))
    weights = model.merger_weights().detach()
    assert torch.all(weights[:, [3, 7]] == 0) and torch.allclose(weights.sum(1),
                                                                 torch.ones(len(weights)))
    assert not np.allclose(fx.output, fx.extras["output_invalid_case"], atol=1e-3)


@pytest.mark.parametrize("family", FIXTURES)
def test_the_mapping_names_every_reference_key(family):
    fx = fixture(family)
    rules = maps.mapping_for(maps.reference_spec(family, fx.config)).rules
    assert sorted(rule.ref for rule in rules) == sorted(fx.state)


@pytest.mark.parametrize("family", FIXTURES)
def test_a_perturbed_weight_breaks_parity(family):
    fx = fixture(family)
    key = next(k for k, v in fx.state.items() if v.ndim >= 2 and "vq_block" not in k)
    state = {**fx.state, key: fx.state[key] + 0.05}
    assert iw.check_fixture(family, imported(family, state, fx), fx) > iw.TOLERANCE


@pytest.mark.parametrize("family", FIXTURES)
def test_a_missing_or_unknown_key_is_refused_naming_it(family):
    fx = fixture(family)
    key = sorted(fx.state)[len(fx.state) // 2]
    missing = {k: v for k, v in fx.state.items() if k != key}
    with pytest.raises(RtbciError) as err:
        imported(family, missing, fx)
    assert f"{key!r} is missing" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RtbciError) as err:
        imported(family, {**fx.state, "encoder.extra.weight": np.zeros(3, np.float32)}, fx)
    assert "'encoder.extra.weight' is not in rtbci's" in str(err.value)
    assert "\n" not in str(err.value)


def test_du_in_keeps_its_unused_heads_out_and_checks_its_constants():
    fx = fixture("seeg-words")
    rules = {r.ref: r for r in maps.mapping_for(maps.reference_spec("seeg-words", fx.config)).rules}
    ignored = sorted(k for k, r in rules.items() if r.target is None and r.expect is None)
    assert ignored == sorted(k for k in fx.state if k.startswith(("vq_block", "contra_block")))
    scale = "encoder.1.xfmr_blocks.0.mha.attention.scale"
    with pytest.raises(RtbciError, match=f"{scale}' is 0.5; rtbci's network uses 0.25"):
        imported("seeg-words", {**fx.state, scale: np.float32(0.5)}, fx)


def test_nice_reads_its_time_major_flatten():
    """Reading proj.0.weight filter-major (no column reordering) breaks the output."""
    fx = fixture("image-retrieval")
    spec = maps.reference_spec("image-retrieval", fx.config)
    mapping = maps.mapping_for(spec)
    mapping.rules = [maps.Rule(r.ref, r.target) if r.ref == "proj.0.weight" else r
                     for r in mapping.rules]
    model = iw.build_network(spec, 250, 250.0)
    iw.load_mapped(mapping, fx.state, model)
    assert iw.check_fixture("image-retrieval", model, fx) > 0.1


@pytest.mark.parametrize("option, value", [("complex_out", False), ("concatenate", True),
                                           ("initial_linear", 32)])
def test_a_reference_option_rtbci_lacks_is_refused(option, value):
    fx = fixture("speech")
    config = {**fx.config, "constructor_args": {**fx.config["constructor_args"],
                                                option: value}}
    with pytest.raises(RtbciError, match=f"reference option {option}={value!r} is not "
                                         "implemented"):
        maps.reference_spec("speech", config)


def test_du_in_initialisation_is_the_references():
    torch.manual_seed(0)
    model = DuIN(16, 1000, 8, srate=1000.0, n_subjects=4, n_blocks=3, n_heads=4, d_head=32,
                 conv_filters=(64, 64, 16))
    for b, block in enumerate(model.encoder.blocks):
        std = 0.02 / np.sqrt(2 * (b + 1))
        for layer in (block.qkv, block.proj, block.ffn[0], block.ffn[3]):
            assert float(layer.weight.detach().std()) == pytest.approx(std, rel=0.1)
            assert torch.all(layer.bias == 0)
    assert float(model.head[1].weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert float(model.subject_block.weight.detach().std()) == pytest.approx(0.02, rel=0.15)
