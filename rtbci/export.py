"""Sessions to BIDS (``rtbci export SESSION --bids ROOT``) and BIDS roots as data
(``bids:ROOT?sub=01&task=rt``), with mne-bids (optional extra ``rtbci[bids]``).

Each source of a session becomes one BIDS recording: datatype ``meg`` if it has MEG
channels, ``ieeg`` if it has sEEG/ECoG/DBS channels, else ``eeg``; with several sources the
``acq`` entity names the source. EEG and iEEG are written as EEGLAB ``.set`` (the samples in
µV as 64-bit floats: they read back bit-exact, where BrainVision at mne-bids' fixed 0.1 µV
resolution does not), MEG as FIF in 64-bit floats. The source's markers are the recording's
annotations, so mne-bids writes them to ``events.tsv`` (``trial_type`` = the marker text,
onsets in seconds from the first sample). Decoder results go to
``derivatives/rtbci/sub-S/[ses-X/]DATATYPE/…_desc-DECODER_results.tsv``, one row per result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from rtbci.devices.recorded import RecordedStream, to_mne_raw
from rtbci.errors import RtbciError

BIDS_PREFIX = "bids:"
# a bids: query key → find_matching_paths argument
ENTITIES = {"sub": "subjects", "ses": "sessions", "task": "tasks", "run": "runs",
            "acq": "acquisitions", "datatype": "datatypes"}
DATA_SUFFIXES = ("eeg", "meg", "ieeg")
IDENTITY_KEY = "RtbciStream"  # sidecar JSON: the source and LSL stream it recorded
DATA_EXTENSIONS = (".set", ".fif", ".vhdr", ".edf", ".bdf")
RESULT_COLUMNS = ("onset", "duration", "decoder", "seq", "trigger", "marker", "label",
                  "prediction", "output", "late", "latency_ms")


def _mne_bids(writing: bool = False):
    try:
        import mne_bids

        if writing:
            import eeglabio  # noqa: F401 - mne's EEGLAB writer, for EEG and iEEG
    except ImportError:
        raise RtbciError("BIDS needs mne-bids and eeglabio: pip install 'rtbci[bids]'") from None
    return mne_bids


def datatype(ch_types: Sequence[str]) -> str:
    """The BIDS datatype of a stream with these MNE channel types."""
    if {"mag", "grad"} & set(ch_types):
        return "meg"
    if {"seeg", "ecog", "dbs"} & set(ch_types):
        return "ieeg"
    return "eeg"


def _label(value: str | None, option: str) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9]+", value):
        raise RtbciError(f"{option}: {value!r} is not a BIDS label (letters and digits only)")
    return value


def export_bids(session: Path, root: Path, subject: str, bids_session: str | None = None,
                task: str = "rtbci", run: str | None = None) -> list[Path]:
    """Write the session directory ``session`` into the BIDS dataset at ``root``.

    Returns the files written: each source's data file, then each decoder's results TSV.
    """
    from rtbci.devices.session import read_results, read_session

    mne_bids = _mne_bids(writing=True)
    for value, option in ((subject, "--subject"), (bids_session, "--session"),
                          (task, "--task"), (run, "--run")):
        _label(value, option)
    recording = read_session(Path(session))
    started = _started(Path(session))
    several = len(recording.streams) > 1
    written, starts = [], {}
    for stream, markers in zip(recording.streams, recording.marker_streams, strict=True):
        kind = datatype(stream.info.ch_types)
        path = mne_bids.BIDSPath(subject=subject, session=bids_session, task=task, run=run,
                                 acquisition=re.sub(r"[^A-Za-z0-9]", "", stream.source)
                                 if several else None, datatype=kind, root=root)
        mne_bids.write_raw_bids(_raw(stream, markers.markers, started), path,
                                allow_preload=True,
                                format="FIF" if kind == "meg" else "EEGLAB",
                                overwrite=True, verbose="error")
        _keep_identity(path, stream)
        written.append(path.fpath)
        starts[stream.source] = (path, float(stream.times[0]))
    written += _write_results(read_results(Path(session)), _decoder_sources(Path(session)),
                              starts, Path(root))
    return written


def _keep_identity(path, stream: RecordedStream) -> None:
    """Add to the recording's sidecar JSON the stream it was, as :data:`IDENTITY_KEY`
    (``source``, ``name``, ``type``, ``source_id``), so the config that recorded it binds
    its sources to it again on replay (:func:`bids_identity`)."""
    sidecar = path.copy().update(suffix=path.datatype, extension=".json").fpath
    meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    info = stream.info
    meta[IDENTITY_KEY] = {"source": stream.source, "name": info.name, "type": info.type,
                          "source_id": info.source_id}
    sidecar.write_text(json.dumps(meta, indent=4) + "\n")


def bids_identity(path: Path) -> dict | None:
    """The stream a BIDS data file recorded, from its sidecar JSON (written by
    ``rtbci export``): ``{"source", "name", "type", "source_id"}``, or None (not one of
    rtbci's, or unreadable)."""
    sidecar = path.with_name(path.name.split(".")[0] + ".json")
    try:
        identity = json.loads(sidecar.read_text()).get(IDENTITY_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(identity, dict) or not all(
            isinstance(identity.get(k), str) and identity[k]
            for k in ("source", "name", "type")):
        return None
    return identity


def _raw(stream: RecordedStream, markers: list[tuple[float, str]], started):
    """A preloaded 64-bit Raw of the stream (SI units) with its markers as annotations,
    measured at ``started`` (a UTC datetime, or None)."""
    import mne

    raw = to_mne_raw(stream, markers)
    out = mne.io.RawArray(raw.get_data(), raw.info, verbose="error")  # orig_format "double"
    out.set_meas_date(started)
    out.set_annotations(raw.annotations)
    return out


def _started(session: Path):
    """When the session started (``session.json``'s local ``started``) in UTC, or None."""
    from datetime import UTC, datetime

    started = json.loads((session / "session.json").read_text()).get("started")
    try:
        return datetime.strptime(started, "%Y%m%d-%H%M%S").astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _decoder_sources(session: Path) -> dict[str, str]:
    """Decoder name → its source's name, from the session's recorded config."""
    config = json.loads((session / "session.json").read_text()).get("config") or {}
    return {d["name"]: d["source"] for d in config.get("decoders", [])}


def _write_results(results: list[dict], sources: dict[str, str], starts: dict,
                   root: Path) -> list[Path]:
    """One TSV per decoder under ``derivatives/rtbci``, named after its source's recording."""
    by_decoder: dict[str, list[dict]] = {}
    for result in results:
        by_decoder.setdefault(result["decoder"], []).append(result)
    if not by_decoder:
        return []
    derivatives = root / "derivatives" / "rtbci"
    derivatives.mkdir(parents=True, exist_ok=True)
    (derivatives / "dataset_description.json").write_text(json.dumps({
        "Name": "rtbci decoder results", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "rtbci"}]}, indent=2) + "\n")
    written = []
    for decoder, rows in by_decoder.items():
        source = sources.get(decoder)
        if source not in starts:  # a decoder of a source that recorded nothing
            continue
        path, t0 = starts[source]
        out = path.copy().update(root=derivatives, description=re.sub(
            r"[^A-Za-z0-9]", "", decoder), suffix="results", extension=".tsv", check=False)
        out.fpath.parent.mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(RESULT_COLUMNS)] + ["\t".join(_row(r, t0)) for r in rows]
        out.fpath.write_text("\n".join(lines) + "\n")
        written.append(out.fpath)
    return written


def _row(result: dict, t0: float) -> list[str]:
    """A result as TSV cells: onset/duration (s, from the recording's first sample) of its
    window, the prediction (top class or top retrieval item) and the output as JSON."""
    output, prediction = None, None
    labels = result.get("labels")
    for key in ("probabilities", "scores", "embedding"):
        if result.get(key) is not None:
            output = {key: np.asarray(result[key]).tolist()}
            break
    if result.get("probabilities") is not None and labels:
        prediction = labels[int(np.argmax(result["probabilities"]))]
    elif result.get("ids") is not None and labels:
        prediction = labels[0]
        output["ids"] = np.asarray(result["ids"]).tolist()
    if output is not None and labels:
        output["labels"] = labels
    latency = (result["t_published"] - result["t_arrived"]) * 1e3
    cells = [f"{result['window_start'] - t0:.6f}",
             f"{result['window_end'] - result['window_start']:.6f}", result["decoder"],
             str(result["seq"]), result["trigger"], result.get("marker"), result.get("label"),
             prediction, None if output is None else json.dumps(output),
             str(bool(result.get("late"))).lower(), f"{latency:.3f}"]
    return ["n/a" if c is None else str(c).replace("\t", " ") for c in cells]


def is_bids_spec(path: str | Path) -> bool:
    return str(path).startswith(BIDS_PREFIX)


def parse_bids_spec(spec: str) -> tuple[Path, dict[str, str]]:
    """``bids:ROOT?sub=01&task=rt`` → ``(ROOT, {"sub": "01", "task": "rt"})``."""
    root, _, query = spec.removeprefix(BIDS_PREFIX).partition("?")
    entities = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(entities) - set(ENTITIES))
    if unknown:
        raise RtbciError(f"{spec}: unknown BIDS entity {unknown[0]!r}; use "
                         + ", ".join(ENTITIES))
    return Path(root).expanduser(), entities


def resolve_bids(root: str | Path, entities: dict[str, str] | None = None) -> list[Path]:
    """The data files (EEG/MEG/iEEG recordings) of the BIDS dataset at ``root`` whose
    entities match ``entities`` (keys of :data:`ENTITIES`: sub, ses, task, run, acq,
    datatype), sorted. Derivatives are not searched.

    Raises :class:`RtbciError` when the root is not a BIDS dataset or nothing matches.
    """
    mne_bids = _mne_bids()
    root = Path(root)
    if not (root / "dataset_description.json").exists():
        raise RtbciError(f"{root}: not a BIDS dataset (no dataset_description.json)")
    entities = entities or {}
    query = {ENTITIES[k]: v for k, v in entities.items()}
    found = mne_bids.find_matching_paths(root, **query, suffixes=list(DATA_SUFFIXES),
                                         extensions=list(DATA_EXTENSIONS), ignore_json=True)
    files = sorted({Path(p.fpath) for p in found
                    if "derivatives" not in Path(p.fpath).relative_to(root).parts})
    if not files:
        wanted = "&".join(f"{k}={v}" for k, v in entities.items()) or "any entities"
        raise RtbciError(f"{root}: no EEG/MEG/iEEG recording with {wanted}; subjects there: "
                         + (", ".join(mne_bids.get_entity_vals(root, "subject")) or "none"))
    return files


def expand_data(paths: Sequence[str | Path]) -> list[Path]:
    """``paths`` with each ``bids:ROOT?ENTITIES`` entry replaced by the files it selects."""
    out = []
    for path in paths:
        if is_bids_spec(path):
            out += resolve_bids(*parse_bids_spec(str(path)))
        else:
            out.append(Path(path))
    return out


def read_bids_raw(path: Path):
    """An MNE Raw of a data file inside a BIDS dataset, read by mne-bids (markers from its
    ``events.tsv``), or None if ``path`` is not one or mne-bids is not installed."""
    try:
        import mne_bids
    except ImportError:
        return None
    if not path.name.startswith("sub-"):
        return None
    try:
        bids_path = mne_bids.get_bids_path_from_fname(path, check=False)
    except Exception:  # noqa: BLE001 - not a BIDS name after all: read it as a plain file
        return None
    if bids_path.suffix not in DATA_SUFFIXES:
        return None
    root = next((p for p in path.parents if (p / "dataset_description.json").exists()), None)
    if root is None:
        return None
    bids_path.update(root=root, datatype=path.parent.name if path.parent.name in
                     DATA_SUFFIXES else None)
    return mne_bids.read_raw_bids(bids_path, verbose="error")
