"""The papers' own weights in rtbci's networks (``rtbci import``).

One mapping per family from the reference implementation's ``state_dict`` keys to rtbci's
parameters and buffers, naming every key the reference has, with the conversion each needs:

- ``speech`` — facebookresearch/brainmagick @ 1aa77d2, ``bm.models.simpleconv.SimpleConv``
  (the paper's ``clip_conv`` configuration) → :class:`~rtbci.models.speech.SpeechNet`.
- ``seeg-words`` — liulab-repository/Du-IN @ c2e289c, ``models.duin.duin.duin_cls`` →
  :class:`~rtbci.models.seeg_words.DuIN`.
- ``image-retrieval`` — eeyhsong/NICE-EEG @ a7709d8, ``nice_stand.Enc_eeg`` (keys ``enc.``)
  followed by ``Proj_eeg`` (keys ``proj.``) → :class:`~rtbci.models.image_retrieval.
  ImageRetrievalNet` with ``encoder="tsconv"``.

The reference's constructor configuration (a JSON object: brainmagick's ``SimpleConv``
keyword arguments, Du-IN's ``params.model`` tree, NICE's ``{"Enc_eeg": {...}, "Proj_eeg":
{...}}``) gives the network's sizes (:func:`reference_spec`); a configuration rtbci's network
cannot express is refused with one line naming the option. A reference key the mapping does
not know, or a mapped key the weights lack, is refused with one line naming it. Keys that
are in the reference's state dict but not on its prediction path (Du-IN's VQ codebook and
contrastive heads) are named in the mapping and deliberately not loaded.

Each rtbci network's ``reference_forward`` is the part of it that computes the reference's
``forward``; rtbci's own input steps (speech's baseline / robust scaling / clamp, Du-IN's
per-window z-score, the image family's whitening) stay identities or per-window versions of
the references' data pipelines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError

__all__ = ["REFERENCES", "TOLERANCE", "Fixture", "ImportOptions", "Mapping", "ReferenceSpec",
           "Rule", "build_network", "check_fixture", "check_fixture_family",
           "import_checkpoint", "import_reference", "layout_rows", "load_mapped", "mapping_for",
           "network_hparams", "read_config", "read_fixture", "read_reference",
           "reference_outputs", "reference_spec"]

TOLERANCE = 1e-4  # max |rtbci − reference| an import must meet on a fixture
INVALID_POSITION = -0.1  # brainmagick's PositionGetter.INVALID: a sensor without a position
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
REFERENCES = {
    "speech": "facebookresearch/brainmagick @ 1aa77d2 (bm.models.simpleconv.SimpleConv)",
    "seeg-words": "liulab-repository/Du-IN @ c2e289c (models.duin.duin.duin_cls)",
    "image-retrieval": "eeyhsong/NICE-EEG @ a7709d8 (nice_stand.Enc_eeg + Proj_eeg)",
}


@dataclass(frozen=True)
class Rule:
    """One reference key.

    ref : the reference's state-dict key
    target : rtbci's state-dict key; None = deliberately not loaded (``why`` says why)
    convert : reference tensor → rtbci layout (default: as it is)
    rows : (start, stop): the rows of ``target`` this key fills (fused Q/K/V)
    expect : for an unloaded key, the value rtbci's network hard-codes (checked)
    why : what the conversion or the omission is
    """

    ref: str
    target: str | None
    convert: Callable | None = None
    rows: tuple[int, int] | None = None
    expect: float | None = None
    why: str = ""


@dataclass
class Mapping:
    """All reference keys of one family at one configuration (``rules``) and rtbci's keys
    that have no reference counterpart (``rtbci_only``: set by the constructor)."""

    family: str
    rules: list[Rule]
    rtbci_only: set[str] = field(default_factory=set)


@dataclass
class ReferenceSpec:
    """The rtbci network a reference configuration corresponds to."""

    family: str
    n_channels: int
    n_samples: int | None  # None: any length (brainmagick is fully convolutional)
    n_outputs: int
    n_subjects: int
    hparams: dict


@dataclass
class Fixture:
    """A parity fixture ``.npz``: reference weights ``state``, ``config``, ``input``,
    ``output`` and the other arrays (``extras``: subject, positions, …)."""

    path: Path
    state: dict
    config: dict
    input: np.ndarray
    output: np.ndarray
    extras: dict


# ----------------------------------------------------------------------------- reading

def read_fixture(path: str | Path, where: str = "--check") -> Fixture:
    """A fixture ``.npz`` (``w/<key>`` tensors, ``config_json``, ``input``, ``output``)."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise RtbciError(f"{where}: cannot read {str(path)!r} as a fixture .npz: {exc}") from None
    missing = [k for k in ("config_json", "input", "output") if k not in arrays]
    if missing:
        raise RtbciError(f"{where}: {path.name} is not a parity fixture (no {missing[0]!r})")
    config = json.loads(str(arrays.pop("config_json")))
    arrays.pop("notes_json", None)
    state = {k[2:]: arrays.pop(k) for k in list(arrays) if k.startswith("w/")}
    return Fixture(path, state, config, arrays.pop("input"), arrays.pop("output"), arrays)


def read_reference(path: str | Path) -> tuple[dict, dict | None, Fixture | None]:
    """REF of ``rtbci import``: ``(state dict, config or None, fixture or None)``.

    A ``.npz`` is a fixture (its ``config_json`` is the config); anything else is read with
    ``torch.load(weights_only=True)``: a state dict, or a dict holding one under
    ``state_dict`` or ``model``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise RtbciError(f"REF: no file {str(path)!r}")
    if path.suffix == ".npz":
        fixture = read_fixture(path, "REF")
        return fixture.state, fixture.config, fixture
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RtbciError(f"REF: {str(path)!r} is not a torch state dict: {first[:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise RtbciError(f"REF: {str(path)!r} holds no state dict (a table of tensors)")
    return dict(raw), None, None


def _args(config: dict) -> dict:
    """The constructor arguments inside a fixture's config (or the config itself)."""
    return config.get("constructor_args", config)


def _need(cfg: dict, key: str, family: str):
    if key not in cfg:
        raise RtbciError(f"{family}: the reference config has no {key!r}")
    return cfg[key]


def _refuse(family: str, option: str, value, supported) -> None:
    raise RtbciError(f"{family}: reference option {option}={value!r} is not implemented by "
                     f"rtbci's network (supported: {supported!r})")


# ----------------------------------------------------------------------------- specs

def reference_spec(family: str, config: dict) -> ReferenceSpec:
    """rtbci's sizes for a reference configuration; one line naming an unsupported option."""
    cfg = _args(config)
    spec = {"speech": _speech_spec, "seeg-words": _duin_spec,
            "image-retrieval": _nice_spec}.get(family)
    if spec is None:
        raise RtbciError(f"import: no reference mapping for family {family!r} (families: "
                         f"{', '.join(REFERENCES)})")
    return spec(cfg, config)


SPEECH_FIXED = {"merger": True, "subject_layers": True, "subject_dim": 0, "concatenate": False,
                "dual_path": 0, "initial_depth": 1, "initial_nonlin": False,
                "complex_out": True, "linear_out": False, "batch_norm": True, "gelu": True,
                "skip": True, "glu_glu": True, "post_skip": False, "scale": None,
                "rewrite": False, "growth": 1.0, "n_fft": None, "subsample_meg_channels": 0,
                "groups": 1, "merger_per_subject": False, "subject_layers_dim": "input",
                "embedding_scale": 1.0}


def _speech_spec(cfg: dict, config: dict) -> ReferenceSpec:
    family = "speech"
    for option, value in SPEECH_FIXED.items():
        if option in cfg and cfg[option] != value:
            _refuse(family, option, cfg[option], value)
    in_channels, hidden = _need(cfg, "in_channels", family), _need(cfg, "hidden", family)
    if set(in_channels) != {"meg"}:
        _refuse(family, "in_channels", in_channels, {"meg": "N"})
    n_merger = int(_need(cfg, "merger_channels", family))
    if int(cfg.get("initial_linear", n_merger)) != n_merger:
        _refuse(family, "initial_linear", cfg["initial_linear"], n_merger)
    if int(cfg.get("glu", 2)) < 1:
        _refuse(family, "glu", cfg["glu"], ">= 1")
    if int(cfg.get("kernel_size", 3)) % 2 == 0:
        _refuse(family, "kernel_size", cfg["kernel_size"], "odd")
    hparams = {"n_merger": n_merger, "fourier_dim": int(cfg.get("merger_pos_dim", 2048)),
               "dropout_radius": float(cfg.get("merger_dropout", 0.2)),
               "hidden": int(hidden["meg"]), "depth": int(_need(cfg, "depth", family)),
               "kernel_size": int(cfg.get("kernel_size", 3)),
               "dilation_period": int(cfg.get("dilation_period") or 10**6),
               "glu_every": int(cfg.get("glu", 2)),
               "dilation_growth": int(cfg.get("dilation_growth", 2)),
               "glu_context": int(cfg.get("glu_context", 1))}
    shape = config.get("input_shape")
    return ReferenceSpec(family, int(in_channels["meg"]), int(shape[-1]) if shape else None,
                         int(_need(cfg, "out_channels", family)),
                         int(_need(cfg, "n_subjects", family)), hparams)


def _duin_spec(cfg: dict, config: dict) -> ReferenceSpec:
    family = "seeg-words"
    p = cfg.get("params", cfg)
    tok, enc, subj, cls = (_need(p, k, family) for k in ("tokenizer", "encoder", "subj", "cls"))
    n = len(tok["n_filters"])
    for option, want in (("use_bn", [True] * n), ("use_res", [False] * n),
                         ("pool_sizes", [1] * n), ("dilation_rates", [1] * n)):
        if list(tok.get(option, want)) != want:
            _refuse(family, f"tokenizer.{option}", tok[option], want)
    if list(tok["n_strides"][1:]) != [1] * (n - 1):
        _refuse(family, "tokenizer.n_strides", tok["n_strides"], "[s, 1, 1, …]")
    for option, want in (("norm_first", False), ("res_attn", False), ("rot_theta", None)):
        if enc.get(option, want) != want:
            _refuse(family, f"encoder.{option}", enc[option], want)
    if subj.get("use_proj", False) or not subj.get("use_bias", True):
        _refuse(family, "subj.use_proj/use_bias", (subj.get("use_proj"), subj.get("use_bias")),
                (False, True))
    if len(cls["d_hidden"]) != 1:
        _refuse(family, "cls.d_hidden", cls["d_hidden"], "one hidden layer")
    d_model = int(enc["d_model"])
    if enc["d_ff"] % d_model:
        _refuse(family, "encoder.d_ff", enc["d_ff"], f"a multiple of d_model {d_model}")
    ff_dropout = enc.get("ff_dropout", 0.2)
    hparams = {"patch_len": int(p["seg_len"]), "conv_filters": list(tok["n_filters"]),
               "conv_kernels": list(tok["kernel_sizes"]), "conv_stride": int(tok["n_strides"][0]),
               "d_neural": int(subj["d_output"]), "n_blocks": int(enc["n_blocks"]),
               "n_heads": int(enc["n_heads"]), "d_head": int(enc["d_head"]),
               "ff_mult": int(enc["d_ff"]) // d_model,
               "attn_dropout": float(enc.get("attn_dropout", 0.2)),
               "ff_dropout": float(ff_dropout[0] if isinstance(ff_dropout, list) else ff_dropout),
               "d_hidden": int(cls["d_hidden"][0])}
    if "vq" in p:
        hparams.update(codebook_size=int(p["vq"]["codex_size"]), d_codex=int(p["vq"]["d_codex"]))
    return ReferenceSpec(family, int(p["n_channels"]), int(p["seq_len"]), int(p["n_labels"]),
                         int(p["n_subjects"]), hparams)


NICE_SAMPLES = {"kernel": 25, "pool": 51, "stride": 5, "filters": 40}  # hard-coded in NICE


def _nice_spec(cfg: dict, config: dict) -> ReferenceSpec:
    family = "image-retrieval"
    enc, proj = cfg.get("Enc_eeg", {}), _need(cfg, "Proj_eeg", family)
    if int(enc.get("emb_size", 40)) != NICE_SAMPLES["filters"]:
        _refuse(family, "Enc_eeg.emb_size", enc["emb_size"], 40)
    n_steps, rest = divmod(int(_need(proj, "embedding_dim", family)), NICE_SAMPLES["filters"])
    if rest:
        _refuse(family, "Proj_eeg.embedding_dim", proj["embedding_dim"], "a multiple of 40")
    k = NICE_SAMPLES
    n_samples = int(config.get("n_times") or (n_steps - 1) * k["stride"] + k["pool"]
                    + k["kernel"] - 1)
    hparams = {"encoder": "tsconv", "n_filters": k["filters"],
               "dropout": float(proj.get("drop_proj", 0.5)), "conv_dropout": 0.5}
    return ReferenceSpec(family, int(config.get("n_channels", 63)), n_samples,
                         int(_need(proj, "proj_dim", family)), 1, hparams)


def nice_seconds(srate: float) -> dict:
    """NICE's kernel / pool / stride (in samples in the reference) as rtbci's seconds."""
    k = NICE_SAMPLES
    return {"temporal_kernel_s": k["kernel"] / srate, "pool_s": k["pool"] / srate,
            "pool_stride_s": k["stride"] / srate}


# ----------------------------------------------------------------------------- mappings

def mapping_for(spec: ReferenceSpec) -> Mapping:
    """The key mapping of ``spec.family`` at ``spec``'s sizes."""
    return {"speech": _speech_mapping, "seeg-words": _duin_mapping,
            "image-retrieval": _nice_mapping}[spec.family](spec)


def _same(prefix_ref: str, prefix_rtbci: str, keys=("weight", "bias")) -> list[Rule]:
    return [Rule(f"{prefix_ref}.{k}", f"{prefix_rtbci}.{k}") for k in keys]


def _speech_mapping(spec: ReferenceSpec) -> Mapping:
    hp = spec.hparams
    rules = [Rule("merger.heads", "heads", why="(n_merger, fourier_dim), same layout"),
             *_same("initial_linear.0", "initial"),
             Rule("subject_layers.weights", "subject_weights", lambda w: w.transpose(1, 2),
                  why="SubjectLayers (subjects, in, out) applied as x·W; rtbci's S @ x "
                      "needs (subjects, out, in)")]
    for k in range(hp["depth"]):
        rules += _same(f"encoders.meg.sequence.{k}.0", f"encoder.convs.{k}")
        rules += _same(f"encoders.meg.sequence.{k}.1", f"encoder.norms.{k}", BN_KEYS)
        if (k + 1) % hp["glu_every"] == 0:
            rules += _same(f"encoders.meg.glus.{k}.0", f"encoder.glus.{k}")
    rules += _same("final.0", "head_in")
    rules += [Rule("final.2.weight", "head_out.weight",
                   why="ConvTranspose1d weight (2·hidden, out, 1): the same layout in rtbci"),
              Rule("final.2.bias", "head_out.bias")]
    return Mapping("speech", rules, {"center", "scale", "embedding", "positions_2d",
                                     "score_offset", "logit_scale"})


def _duin_subject_weight(n_in: int, n_out: int):
    def convert(w):  # (d_in·d_out, subjects) → (subjects, d_out, d_in)
        return w.T.reshape(-1, n_in, n_out).transpose(1, 2)
    return convert


DUIN_IGNORED = {
    "vq_block.counts": "VQ codebook usage counts (pre-training)",
    "vq_block.pre_proj.0.weight": "VQ projection (pre-training)",
    "vq_block.pre_proj.0.bias": "VQ projection (pre-training)",
    "vq_block.pre_proj.2.weight": "VQ projection (pre-training)",
    "vq_block.pre_proj.2.bias": "VQ projection (pre-training)",
    "vq_block.codex.embeddings": "VQ codebook (pre-training)",
    "vq_block.codex.initted": "VQ codebook flag (pre-training)",
    "vq_block.layernorm.weight": "VQ norm (pre-training)",
    "vq_block.layernorm.bias": "VQ norm (pre-training)",
    "vq_block.post_proj.0.weight": "VQ projection (pre-training)",
    "vq_block.post_proj.0.bias": "VQ projection (pre-training)",
    "contra_block.t": "contrastive temperature (unused by classification)",
    "contra_block.proj_z.0.weight": "contrastive head (unused by classification)",
    "contra_block.proj_z.0.bias": "contrastive head (unused by classification)",
    "contra_block.proj_y.0.weight": "contrastive head (unused by classification)",
    "contra_block.proj_y.0.bias": "contrastive head (unused by classification)",
}


def _duin_mapping(spec: ReferenceSpec) -> Mapping:
    hp = spec.hparams
    width = hp["n_heads"] * hp["d_head"]
    rules = [Rule("subj_block.subj_layer.W.weight", "subject_block.weight",
                  _duin_subject_weight(spec.n_channels, hp["d_neural"]),
                  why="column s = subject s's (d_in, d_out) map, x @ W_s; rtbci stores "
                      "(subjects, d_out, d_in)"),
             Rule("subj_block.subj_layer.B.weight", "subject_block.bias", lambda b: b.T,
                  why="(d_out, subjects) → (subjects, d_out)")]
    for i in range(len(hp["conv_filters"])):
        rules += _same(f"tokenizer.conv_blocks.{i}.0.1", f"tokenizer.convs.{2 * i}")
        rules += _same(f"tokenizer.conv_blocks.{i}.1.1", f"tokenizer.convs.{2 * i + 1}", BN_KEYS)
    rules.append(Rule("emb_time.time_encodings", "encoder.time_embedding"))
    for b in range(hp["n_blocks"]):
        ref, ours = f"encoder.1.xfmr_blocks.{b}", f"encoder.blocks.{b}"
        for j, name in enumerate("qkv"):
            rules += [Rule(f"{ref}.mha.W_{name}.W.{k}", f"{ours}.qkv.{k}",
                           rows=(j * width, (j + 1) * width),
                           why=f"rows {j * width}:{(j + 1) * width} of the fused Q/K/V")
                      for k in ("weight", "bias")]
        rules += _same(f"{ref}.mha.norm_q", f"{ours}.norm_q")
        rules += _same(f"{ref}.mha.norm_k", f"{ours}.norm_k")
        rules.append(Rule(f"{ref}.mha.attention.scale", None,
                          expect=1 / math.sqrt(hp["d_head"]),
                          why="attention scale: rtbci uses 1/sqrt(d_head)"))
        rules += _same(f"{ref}.mha.proj.0", f"{ours}.proj")
        rules += _same(f"{ref}.norm_mha", f"{ours}.norm1")
        rules += _same(f"{ref}.ffn.fc1.0", f"{ours}.ffn.0")
        rules += _same(f"{ref}.ffn.fc2.0", f"{ours}.ffn.3")
        rules += _same(f"{ref}.norm_ffn", f"{ours}.norm2")
    rules += _same("cls_block.cls_head.1.0", "head.1")
    rules += _same("cls_block.cls_head.2.0", "head.3")
    rules += [Rule(key, None, why=why) for key, why in DUIN_IGNORED.items()]
    return Mapping("seeg-words", rules)


def _time_major_columns(n_filters: int):
    def convert(w):  # NICE flattens (time, filter); rtbci (filter, time)
        n_out, n_in = w.shape
        return w.reshape(n_out, n_in // n_filters, n_filters).transpose(1, 2).reshape(n_out, n_in)
    return convert


def _nice_mapping(spec: ReferenceSpec) -> Mapping:
    rules = [*_same("enc.0.tsconv.0", "features.temporal"),
             *_same("enc.0.tsconv.2", "features.bn_temporal", BN_KEYS),
             *_same("enc.0.tsconv.4", "features.spatial"),
             *_same("enc.0.tsconv.5", "features.bn_spatial", BN_KEYS),
             *_same("enc.0.projection.0", "features.mix"),
             Rule("proj.0.weight", "projector.0.weight",
                  _time_major_columns(spec.hparams["n_filters"]),
                  why="NICE flattens (filters, time) time-major: columns reordered"),
             Rule("proj.0.bias", "projector.0.bias"),
             *_same("proj.1.fn.1", "projector.1.1"),
             *_same("proj.2", "projector.2")]
    return Mapping("image-retrieval", rules, {"input_mean", "whiten", "logit_scale"})


# ----------------------------------------------------------------------------- loading

def load_mapped(mapping: Mapping, reference: dict, model) -> None:
    """Load ``reference`` (key → tensor or array) into ``model`` through ``mapping``.

    One-line :class:`RtbciError` naming the first unknown key, missing key, shape mismatch
    or hard-coded constant that differs.
    """
    import torch

    family, known = mapping.family, {rule.ref for rule in mapping.rules}
    unknown = sorted(set(reference) - known)
    if unknown:
        raise RtbciError(f"{family}: reference key {unknown[0]!r} is not in rtbci's "
                         f"{family} mapping (another reference version or configuration?)")
    missing = [rule.ref for rule in mapping.rules if rule.ref not in reference]
    if missing:
        raise RtbciError(f"{family}: reference key {missing[0]!r} is missing from the "
                         "weights")
    state = model.state_dict()
    loaded: dict = {}
    for rule in mapping.rules:
        value = torch.as_tensor(np.asarray(reference[rule.ref]))
        if rule.target is None:
            if rule.expect is not None and not math.isclose(float(value), rule.expect,
                                                            rel_tol=1e-5):
                raise RtbciError(f"{family}: reference {rule.ref!r} is {float(value):g}; "
                                 f"rtbci's network uses {rule.expect:g}")
            continue
        value = rule.convert(value) if rule.convert else value
        dest = loaded.setdefault(rule.target, state[rule.target].clone())
        part = dest if rule.rows is None else dest[rule.rows[0]:rule.rows[1]]
        if tuple(part.shape) != tuple(value.shape):
            raise RtbciError(f"{family}: reference {rule.ref!r} has shape {tuple(value.shape)}; "
                             f"rtbci's {rule.target} needs {tuple(part.shape)}")
        part.copy_(value.to(part.dtype))
    uncovered = sorted(set(state) - set(loaded) - mapping.rtbci_only)
    if uncovered:  # the mapping and the network disagree: a bug in this module
        raise RtbciError(f"{family}: rtbci's {uncovered[0]!r} has no reference key")
    model.load_state_dict({**state, **loaded})


def layout_rows(positions: np.ndarray) -> list:
    """brainmagick 2-D positions ``(C, 2)`` → SpeechNet ``layout`` rows: ``[x, y]``, or None
    for the reference's invalid marker (−0.1, −0.1) and non-finite rows."""
    out = []
    for x, y in np.asarray(positions, dtype=np.float64):
        invalid = not (np.isfinite(x) and np.isfinite(y)) or (
            abs(x - INVALID_POSITION) < 1e-6 and abs(y - INVALID_POSITION) < 1e-6)
        out.append(None if invalid else [float(x), float(y)])
    return out


def build_network(spec: ReferenceSpec, n_samples: int, srate: float, layout: list | None = None):
    """rtbci's network for ``spec`` (untrained), ``n_samples`` long at ``srate`` Hz, eval."""
    from rtbci.models.families import get_family

    hparams = network_hparams(spec, srate, layout)
    cls = getattr(get_family(spec.family).load(), get_family(spec.family).net)
    return cls(spec.n_channels, n_samples, spec.n_outputs, srate=srate,
               n_subjects=spec.n_subjects, **hparams).eval()


def network_hparams(spec: ReferenceSpec, srate: float, layout: list | None = None) -> dict:
    """The constructor hyper-parameters of ``spec`` at ``srate`` (speech: with ``layout``)."""
    hparams = dict(spec.hparams)
    if spec.family == "image-retrieval":
        hparams.update(nice_seconds(srate))
    if spec.family == "speech":
        if layout is None:
            raise RtbciError("speech: the 2-D sensor layout the reference was trained with is "
                             "needed (--positions LAYOUT.npy, (channels, 2) in [0, 1])")
        if len(layout) != spec.n_channels:
            raise RtbciError(f"--positions: {len(layout)} rows for the reference's "
                             f"{spec.n_channels} channels")
        hparams["layout"] = layout
    return hparams


def import_reference(family: str, reference: dict, config: dict, n_samples: int | None,
                     srate: float, layout: list | None = None):
    """``(model, spec)``: rtbci's network of ``family`` loaded with reference weights."""
    spec = reference_spec(family, config)
    n_samples = spec.n_samples or n_samples
    if n_samples is None:
        raise RtbciError(f"{family}: the reference fixes no window length; give --samples")
    model = build_network(spec, n_samples, srate, layout)
    load_mapped(mapping_for(spec), reference, model)
    return model.eval(), spec


def reference_outputs(family: str, model, fixture: Fixture) -> dict[str, np.ndarray]:
    """The network's reference-forward on a fixture's input(s): ``{"output": array, …}``
    (speech also ``output_invalid_case`` when the fixture has it), each shaped like the
    fixture's. Speech takes the fixture's positions (an input of the reference)."""
    import torch

    x = torch.as_tensor(fixture.input, dtype=torch.float32)
    subject = fixture.extras.get("subject")
    subject = None if subject is None else torch.as_tensor(subject, dtype=torch.long)
    if family == "seeg-words" and fixture.input.shape[1] != model.n_samples:
        raise RtbciError(f"--check: the fixture's windows have {fixture.input.shape[1]} "
                         f"samples, the network {model.n_samples}")
    out = {}
    with torch.no_grad():
        if family == "speech":
            for name, pos in (("output", "positions"),
                              ("output_invalid_case", "positions_invalid_case")):
                if pos in fixture.extras:
                    model.set_layout(layout_rows(fixture.extras[pos]))
                if name == "output" or pos in fixture.extras:
                    out[name] = model.reference_forward(x, subject).numpy()
        elif family == "seeg-words":
            out["output"] = model.reference_forward(x, subject).numpy()
        else:
            out["output"] = model.reference_forward(x[:, 0].transpose(1, 2)).numpy()
    return out


def check_fixture_family(family: str, fixture: Fixture) -> None:
    """One line if ``fixture`` was made with another family's reference."""
    repo = _args(fixture.config) is not fixture.config and fixture.config.get("reference_repo")
    if repo and not REFERENCES[family].startswith(f"{repo} "):
        raise RtbciError(f"--check: {fixture.path.name} was made with {repo}, not with "
                         f"the {family} reference ({REFERENCES[family]})")


def check_fixture(family: str, model, fixture: Fixture) -> float:
    """Max |network − reference| over the fixture's outputs; one line if the fixture is not
    one of ``family``'s or its input does not fit the network."""
    check_fixture_family(family, fixture)
    try:
        outputs = reference_outputs(family, model, fixture)
    except RuntimeError as exc:  # the fixture's input does not fit the network
        raise RtbciError(f"--check: {fixture.path.name}'s input {fixture.input.shape} does "
                         f"not fit the imported network: {str(exc).splitlines()[0][:160]}"
                         ) from None
    diffs = []
    for name, got in outputs.items():
        want = fixture.output if name == "output" else fixture.extras[name]
        if got.shape != want.shape:
            raise RtbciError(f"--check: the network gives {name} of shape {got.shape}, the "
                             f"fixture {want.shape}")
        diffs.append(float(np.abs(got - want).max()))
    return max(diffs)


# ----------------------------------------------------------------------------- checkpoints

CH_TYPES = {"speech": "mag", "seeg-words": "seeg", "image-retrieval": "eeg"}


@dataclass
class ImportOptions:
    """What ``rtbci import`` needs besides the weights (see ``rtbci import --help``)."""

    config: dict | None = None
    channels: list[str] | None = None
    ch_type: str | None = None
    positions: Path | None = None
    targets: Path | None = None
    labels: list[str] | None = None
    srate: float | None = None
    samples: int | None = None
    window_start: float | None = None
    events: list[str] | None = None
    preprocess: dict = field(default_factory=dict)


def read_config(text: str) -> dict:
    """``--config``: a JSON file or inline JSON object."""
    path = Path(text)
    try:
        raw = path.read_text() if path.is_file() else text
        config = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise RtbciError(f"--config: {text[:60]!r} is neither a JSON file nor JSON: "
                         f"{exc}") from None
    if not isinstance(config, dict):
        raise RtbciError("--config: expected a JSON object of constructor arguments")
    return config


def _layout(family: str, opts: ImportOptions, fixture: Fixture | None) -> list | None:
    if family != "speech":
        return None
    if opts.positions is not None:
        try:
            positions = np.load(opts.positions)
        except (OSError, ValueError) as exc:
            raise RtbciError(f"--positions: cannot read {str(opts.positions)!r}: {exc}") from None
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise RtbciError(f"--positions: {opts.positions.name} has shape {positions.shape}; "
                             "expected (channels, 2): the 2-D layout in [0, 1]")
        return layout_rows(positions)
    if fixture is not None and "positions" in fixture.extras:
        return layout_rows(fixture.extras["positions"])
    raise RtbciError("--positions: speech needs the 2-D sensor layout the reference was "
                     "trained with (LAYOUT.npy, (channels, 2) in [0, 1])")


def _check_names(option: str, names: list[str] | None, n: int, carried: str, given: str,
                 counted: str, order: str) -> None:
    """``option`` must give the reference's ``n`` names (it carries none), in ``order``."""
    if not names:
        raise RtbciError(f"{option}: the reference weights carry no {carried}; give its {n} "
                         f"{given} in {order} order, comma-separated")
    if len(names) != n:
        raise RtbciError(f"{option}: {len(names)} {given.split()[-1]} for the reference's {n} "
                         f"{counted}")


def _output(family: str, spec: ReferenceSpec, opts: ImportOptions, n_samples: int):
    """``(OutputContract, bank or None)`` from --labels or --targets."""
    from rtbci.models.checkpoint import OutputContract
    from rtbci.models.families import get_family
    from rtbci.models.windows import load_targets

    if get_family(family).kind == "classes":
        _check_names("--labels", opts.labels, spec.n_outputs, "class names", "labels",
                     "outputs", "output")
        return OutputContract(kind="classes", labels=list(opts.labels)), None
    if opts.targets is None:
        raise RtbciError(f"--targets: {family} retrieves among candidates; give their bank "
                         f"BANK.npy ({spec.n_outputs}-d embeddings, labels in BANK.json)")
    bank, labels = load_targets(opts.targets)
    if bank.shape[1] != spec.n_outputs:
        raise RtbciError(f"--targets: {opts.targets.name} rows are {bank.shape[1]}-d; the "
                         f"network outputs {spec.n_outputs}")
    if bank.ndim == 3 and (family != "speech" or bank.shape[2] != n_samples):
        raise RtbciError(f"--targets: {opts.targets.name} has shape {bank.shape}; expected "
                         f"(n, {spec.n_outputs})" + (f" or (n, {spec.n_outputs}, {n_samples})"
                                                     if family == "speech" else ""))
    pooled = family == "speech" and bank.ndim == 2
    return OutputContract(kind="retrieval", labels=labels, pooled=pooled), bank


def import_checkpoint(family: str, ref: Path, out: Path, opts: ImportOptions):
    """Write an rtbci checkpoint of ``family`` from reference weights ``ref``; returns
    ``(path, spec, fixture or None)``."""
    from rtbci.models.checkpoint import Contract, InputContract, save_checkpoint
    from rtbci.models.families import get_family

    fam = get_family(family)
    if family not in REFERENCES:
        raise RtbciError(f"FAMILY: no reference mapping for {family!r} (families: "
                         f"{', '.join(REFERENCES)})")
    state, fixture_config, fixture = read_reference(ref)
    config = opts.config or fixture_config
    if config is None:
        raise RtbciError("--config: a state-dict REF needs the reference's constructor "
                         "configuration (JSON file or object)")
    srate = opts.srate or fam.srate
    start, end = fam.window
    n_samples = opts.samples or round((end - start) * srate)
    layout = _layout(family, opts, fixture)
    model, spec = import_reference(family, state, config, n_samples, srate, layout)
    n_samples = spec.n_samples or n_samples
    _check_names("--channels", opts.channels, spec.n_channels, "channel names",
                 "channel names", "channels", "input")
    output, bank = _output(family, spec, opts, n_samples)
    preprocess = fam.preprocess_config(resample_hz=srate, **opts.preprocess)
    contract = Contract(
        family=family, n_subjects=spec.n_subjects,
        hparams={**network_hparams(spec, srate, layout), "n_outputs": spec.n_outputs},
        input=InputContract(
            ch_names=list(opts.channels),
            ch_types=[opts.ch_type or CH_TYPES[family]] * spec.n_channels,
            srate=srate, n_samples=n_samples,
            window_start_s=start if opts.window_start is None else opts.window_start,
            events=opts.events or [fam.events],
            preprocess=preprocess.model_dump(exclude={"picks"})),
        output=output,
        training={"imported_from": Path(ref).name, "reference": REFERENCES[family],
                  "reference_config": _args(config)})
    return save_checkpoint(out, contract, model.state_dict(), bank), spec, fixture
