"""The papers' own weights in rtbci's networks (``rtbci import``).

Reading a reference's weights and parity fixtures, loading them through the family's mapping
and checking and saving the result. The mappings (:mod:`rtbci.models.reference_maps`) go, one
per family, from the reference implementation's ``state_dict`` keys to rtbci's parameters and
buffers, naming every key the reference has, with the conversion each needs:

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError
from rtbci.models.reference_maps import (
    REFERENCES,
    Mapping,
    ReferenceSpec,
    constructor_args,
    mapping_for,
    nice_seconds,
    reference_spec,
)

__all__ = ["TOLERANCE", "Fixture", "ImportOptions", "build_network", "check_fixture",
           "check_fixture_family", "import_checkpoint", "import_reference", "layout_rows",
           "load_mapped", "network_hparams", "read_config", "read_fixture", "read_reference",
           "reference_outputs"]

TOLERANCE = 1e-4  # max |rtbci − reference| an import must meet on a fixture
INVALID_POSITION = -0.1  # brainmagick's PositionGetter.INVALID: a sensor without a position


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
    repo = (constructor_args(fixture.config) is not fixture.config
            and fixture.config.get("reference_repo"))
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
                  "reference_config": constructor_args(config)})
    return save_checkpoint(out, contract, model.state_dict(), bank), spec, fixture
