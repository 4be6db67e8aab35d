"""What the papers' networks are in rtbci's terms (``rtbci import``): a reference
configuration → the rtbci network it corresponds to (:func:`reference_spec`, refusing in one
line an option rtbci's network cannot express), and that network's state-dict keys → rtbci's,
with the conversion each needs (:func:`mapping_for`). Loading, checking and saving are
:mod:`rtbci.models.import_weights`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from rtbci.errors import RtbciError

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



def constructor_args(config: dict) -> dict:
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
    cfg = constructor_args(config)
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
