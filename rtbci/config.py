"""The configuration: one TOML file, validated up front (see README "Configuration").

Every error names the key path (``sources[0].stream.name``) and says what was expected.
"""

from __future__ import annotations

import logging
import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rtbci.errors import RtbciError
from rtbci.events import MarkerMatcher
from rtbci.preprocess_config import PreprocessConfig
from rtbci.sinks.configs import ConsoleSinkConfig, LSLSinkConfig, MQTTSinkConfig, RecordSinkConfig

log = logging.getLogger("rtbci")

ProcessingFlag = Literal["clocksync", "dejitter", "monotonize", "threadsafe"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamQuery(_Strict):
    """Which LSL stream: any of name / type / source_id (all given must match)."""

    name: str | None = None
    type: str | None = None
    source_id: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> StreamQuery:
        if not (self.name or self.type or self.source_id):
            raise ValueError("give at least one of name, type, source_id")
        return self

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v}


class EngineConfig(_Strict):
    session: str = Field("rtbci", pattern=r"^[A-Za-z0-9_.-]+$",
                         description="session name; MQTT topics are rtbci/<session>/…")
    stats_interval_s: float = Field(1.0, gt=0, description="period of the live stats lines")
    max_marker_bytes: int = Field(
        1024, ge=16, le=1024**2, description="longest marker kept, in bytes (UTF-8); longer "
        "markers from a peer are cut to it and counted (markers_truncated)")
    switch_interval_ms: float = Field(
        0.5, gt=0, le=100, description="Python's GIL switch interval while the engine runs "
        "(sys.setswitchinterval; Python's default is 5 ms): a thread that waits for the GIL "
        "(a source's acquisition thread, while a decoder's thread runs numpy) gets it within "
        "about this long")


RESERVED_SOURCE_NAMES = ("session",)  # the recorder's session.json (devices/session.py)
# the engine's own topics next to rtbci/<session>/<decoder> (sinks/mqtt.py, docs/messages.md)
RESERVED_DECODER_NAMES = ("stats", "status")
MAX_BUFFER_BYTES = 2 * 1024**3  # one source's ring buffer (see buffer_bytes); rtbci check


def buffer_bytes(buffer_seconds: float, srate: float, n_channels: int) -> int:
    """Estimated memory of a source's buffers: capacity × channels × float32 × 2 (the ring
    buffer and its copies: arrival times, the record sink's ring)."""
    return round(buffer_seconds * srate) * n_channels * 4 * 2


class _SourceBase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    buffer_seconds: float = Field(30.0, gt=0, le=3600)
    preprocess: PreprocessConfig = PreprocessConfig()


class LSLSourceConfig(_SourceBase):
    kind: Literal["lsl"]
    stream: StreamQuery
    markers: StreamQuery | None = None
    processing: list[ProcessingFlag] = ["clocksync", "dejitter"]


class SimulateSourceConfig(_SourceBase):
    kind: Literal["simulate"]
    profile: Literal["eeg64", "meg306", "seeg128"] = "eeg64"
    seed: int = Field(0, description="session seed: noise and trial sequence")
    subject: int = Field(0, description="subject seed: the class patterns")
    snr: float = Field(1.0, ge=0)
    classes: list[str] = Field(["left", "right"], min_length=1)
    stream_name: str | None = Field(None, description="LSL name of the outlet (default: name)")
    task: Literal["motor-gnn", "seeg-words", "image-retrieval", "speech"] | None = Field(
        None, description="simulate a decoder family's task (its own profile) instead")
    items: list[str] | None = Field(
        None, min_length=1, description="with task: draw trials only from these item labels")

    @model_validator(mode="after")
    def _items_of_the_task(self) -> SimulateSourceConfig:
        if self.items is not None:
            from rtbci.devices.tasks import check_items

            try:
                check_items(self.task, self.items)
            except RtbciError as exc:
                raise ValueError(str(exc)) from None
        return self


class BrainFlowSourceConfig(_SourceBase):
    """A BrainFlow board (``rtbci.devices.brainflow``; needs ``rtbci[brainflow]``)."""

    kind: Literal["brainflow"]
    board: str | int = Field(description="BrainFlow board name (SYNTHETIC_BOARD, CYTON_BOARD…) "
                                         "or id")
    serial_port: str = ""
    ip_address: str = ""
    ip_port: int = Field(0, ge=0, le=65535)
    mac_address: str = ""
    serial_number: str = ""
    other_info: str = ""
    file: str = ""
    master_board: str | int | None = Field(
        None, description="PLAYBACK_FILE_BOARD / STREAMING_BOARD: the board that recorded")
    stream_name: str | None = Field(None, description="name of the stream (default: name)")
    lost_after_s: float = Field(5.0, gt=0, description="silent this long: the board is lost "
                                                       "and is prepared again")
    dejitter: bool = Field(True, description="regular timestamps (measured rate, smoothed "
                                             "delay) instead of BrainFlow's arrival stamps")

    @field_validator("board", "master_board")
    @classmethod
    def _board_name(cls, board: str | int | None) -> str | int | None:
        from rtbci.devices.brainflow import board_id

        if board is not None:
            try:
                board_id(board)
            except RtbciError as exc:
                raise ValueError(str(exc)) from None
        return board

    @model_validator(mode="after")
    def _known_board(self) -> BrainFlowSourceConfig:
        from rtbci.devices.brainflow import board_descr

        try:
            board_descr(self.board, self.master_board)
        except RtbciError as exc:
            raise ValueError(str(exc)) from None
        return self


SourceConfig = Annotated[LSLSourceConfig | SimulateSourceConfig | BrainFlowSourceConfig,
                         Field(discriminator="kind")]
SOURCE_KINDS = ("lsl", "simulate", "brainflow")

RENAMED_DECODER_KEYS = {"thread": "placement", "threads": "compute_threads"}  # old → new

Runtime = Literal["auto", "numpy", "torch", "onnxruntime", "cudagraph", "tensorrt"]


class DecoderConfig(_Strict):
    """A ``[[decoders]]`` entry: which model, on which source, when, and how fast."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(description="a checkpoint (.pt), builtin:bandpower or python:MOD:FACTORY")
    source: str
    window_ms: float | tuple[float, float] | None = Field(
        None, description="sliding window length; [start, end] relative to the marker with "
        "on_marker; a checkpoint's own window when left out")
    every_ms: float | None = Field(None, gt=0)
    on_marker: str | list[str] | None = Field(
        None, description="marker pattern(s): exact name, prefix of prefix/…, or re:<regex> "
        "(rtbci.events)")
    budget_ms: float = Field(50.0, gt=0)
    timeout_ms: float = Field(2000.0, gt=0)
    runtime: Runtime = "auto"
    device: str = "cpu"
    precision: Literal["fp32", "tf32", "fp16", "bf16"] = "fp32"
    compute_threads: int | None = Field(
        None, ge=1, description="threads the decoder's numeric library may use (torch, ONNX "
        "Runtime; default: 1 on CPU); numpy's BLAS gets the most any CPU decoder asks, "
        "process-wide")
    placement: Literal["auto", "own", "source"] = Field(
        "auto", description="auto: source for a builtin: decoder measured at start under "
        "INLINE_MAX_MS a window, else own; own: the decoder's own worker thread; source: its "
        "source's acquisition thread, right after the chunk that completes its window (no "
        "wake-up, no window copy, a read-only view; for decoders far faster than a chunk "
        "period): builtin: models only, never user code (python:, checkpoints)")
    isolation: Literal["thread", "process"] = Field(
        "thread", description="thread: a worker thread in the engine; process: its own worker "
        "process, supervised (restarted when it dies, killed past kill_after × budget_ms or "
        "max_memory_mb); docs/latency.md")
    kill_after: float = Field(10.0, gt=1, description="process: kill and restart a call "
                              "running past this many times budget_ms")
    max_memory_mb: float | None = Field(None, gt=0, description="process: kill and restart "
                                        "the worker past this RSS, MB")
    cpu: list[int] | None = Field(None, min_length=1, description="process: the CPU cores "
                                  "its worker may run on (affinity), e.g. [1]")
    nice: int | None = Field(None, ge=0, le=19, description="process: its worker's niceness "
                             "(0 = as the engine, 19 = the lowest priority)")
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_DECODER_NAMES:
            raise ValueError(f"{name!r} is reserved: the engine's own MQTT topic "
                             f"rtbci/<session>/{name} (reserved: "
                             + ", ".join(RESERVED_DECODER_NAMES) + ")")
        return name

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """The keys renamed in 0.x, accepted for one release with a warning each."""
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED_DECODER_KEYS.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{old}: renamed {new}; give only {new}")
                log.warning("decoder %r: %r is renamed %r (the old name goes in the next "
                            "release)", data.get("name"), old, new)
                data = {**data, new: data[old]}
                del data[old]
        return data

    @model_validator(mode="after")
    def _isolation(self) -> DecoderConfig:
        if self.isolation == "process" and self.placement == "source":
            raise ValueError('placement = "source" runs on the acquisition thread: it cannot '
                             'be isolation = "process"')
        if self.isolation == "thread":
            given = [k for k in ("max_memory_mb", "cpu", "nice") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{given[0]}: only for isolation = \"process\" (a worker "
                                 "thread shares the engine's memory and cores)")
        if self.cpu is not None:
            cores = sorted(os.sched_getaffinity(0))
            bad = [c for c in self.cpu if c not in cores]
            if bad:
                raise ValueError(f"cpu: core {bad[0]} is not one the engine may use here "
                                 f"({', '.join(map(str, cores))})")
        return self

    @model_validator(mode="after")
    def _one_trigger(self) -> DecoderConfig:
        if (self.every_ms is None) == (self.on_marker is None):
            raise ValueError("give exactly one of every_ms (sliding) or on_marker (event-locked)")
        if self.on_marker is not None:
            try:
                MarkerMatcher(self.on_marker)
            except RtbciError as exc:
                raise ValueError(f"on_marker: {exc}") from None
        if self.window_ms is None:
            if self.model.startswith(("builtin:", "python:")):
                raise ValueError(f"window_ms: required for {self.model!r} (only a checkpoint "
                                 "brings its own window)")
        elif self.on_marker is not None:
            if not isinstance(self.window_ms, tuple) or self.window_ms[0] >= self.window_ms[1]:
                raise ValueError("with on_marker, window_ms is [start, end] in ms relative to "
                                 "the marker, start < end (e.g. [0, 600])")
        elif isinstance(self.window_ms, tuple) or self.window_ms <= 0:
            raise ValueError("with every_ms, window_ms is one length in ms > 0 (e.g. 500)")
        return self


SinkConfig = Annotated[MQTTSinkConfig | LSLSinkConfig | ConsoleSinkConfig | RecordSinkConfig,
                       Field(discriminator="kind")]
SINK_KINDS = ("mqtt", "lsl", "console", "record")
TAGS = {"sources": SOURCE_KINDS, "sinks": SINK_KINDS}


class Config(_Strict):
    engine: EngineConfig = EngineConfig()
    sources: list[SourceConfig] = Field(min_length=1)
    decoders: list[DecoderConfig] = []
    sinks: list[SinkConfig] = []
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the config are resolved against (the file's)."""
        return self._base_dir

    def resolve(self, path: str | Path) -> Path:
        """``path`` relative to :attr:`base_dir` unless absolute."""
        return self._base_dir / Path(path).expanduser()

    @model_validator(mode="after")
    def _references(self) -> Config:
        for i, src in enumerate(self.sources):
            if src.name in RESERVED_SOURCE_NAMES:
                raise ValueError(f"sources[{i}].name: {src.name!r} is reserved (the record "
                                 f"sink writes {src.name}.json for the session itself)")
        for section in ("sources", "decoders"):
            seen = set()
            for i, entry in enumerate(getattr(self, section)):
                if entry.name in seen:
                    raise ValueError(f"{section}[{i}].name: {entry.name!r} is used twice")
                seen.add(entry.name)
        sources = [s.name for s in self.sources]
        for i, dec in enumerate(self.decoders):
            _check_model(dec, f"decoders[{i}]")
            if dec.source not in sources:
                raise ValueError(f"decoders[{i}].source: no source named {dec.source!r} "
                                 f"(sources: {', '.join(sources)})")
            buffer_s = self.sources[sources.index(dec.source)].buffer_seconds
            if window_seconds(dec.window_ms) > buffer_s:
                raise ValueError(f"decoders[{i}].window_ms: {window_seconds(dec.window_ms):g} s "
                                 f"is longer than the buffer of source {dec.source!r} "
                                 f"(buffer_seconds = {buffer_s:g})")
        return self


def _check_model(dec: DecoderConfig, where: str) -> None:
    """Refuse an unknown ``builtin:`` model and options its model does not take (one line)."""
    from rtbci.models import BUILTINS, option_problem

    if dec.model.startswith("builtin:") and dec.model not in BUILTINS:
        raise ValueError(f"{where}.model: unknown model {dec.model!r}; expected a checkpoint "
                         f"(.pt), {', '.join(BUILTINS)} or python:MODULE:FACTORY")
    if dec.placement == "source" and not dec.model.startswith("builtin:"):
        raise ValueError(f"{where}.placement: 'source' runs a decoder on the acquisition "
                         f"thread, where only the engine's own builtin: decoders may run; give "
                         f"{dec.model!r} placement = \"auto\" (the default: its own worker "
                         "for user code) or \"own\"")
    problem = option_problem(dec.model, dec.options, where)
    if problem:
        raise ValueError(problem)


def window_seconds(window_ms: float | tuple[float, float] | None) -> float:
    """A ``window_ms`` value's length in seconds (0 when left out)."""
    if window_ms is None:
        return 0.0
    if isinstance(window_ms, tuple):
        return (window_ms[1] - window_ms[0]) * 1e-3
    return window_ms * 1e-3


def _key_path(loc: tuple) -> str:
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif i > 1 and isinstance(loc[i - 1], int) and part in TAGS.get(loc[i - 2], ()):
            continue  # the discriminated-union tag pydantic inserts
        else:
            path += f".{part}" if path else str(part)
    return path


def format_errors(error: ValidationError, origin: str) -> str:
    """One line per problem: ``FILE: key.path: what is wrong (got …)``."""
    lines = []
    for err in error.errors():
        path = _key_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown kind {err['input'].get('kind')!r}; expected one of " + ", ".join(
                TAGS[err["loc"][0]])
        elif err["type"] == "union_tag_not_found":
            msg = "missing key 'kind' (one of " + ", ".join(TAGS[err["loc"][0]]) + ")"
        elif ("input" in err and err["type"] != "missing" and repr(err["input"]) not in msg
              and not isinstance(err["input"], dict | list)):
            msg += f" (got {err['input']!r})"
        lines.append(f"{origin}: {path}: {msg}" if path else f"{origin}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, origin: str = "config", base_dir: Path | None = None) -> Config:
    """Validate a config dict; raise :class:`RtbciError` with one line per problem.

    Relative paths in it resolve against ``base_dir`` (default: the working directory).
    """
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise RtbciError(format_errors(exc, origin)) from None
    problems = [f"{origin}: {path}: {why}" for path, why in _odd_numbers(config, data)]
    if problems:
        raise RtbciError("\n".join(problems))
    if base_dir is not None:
        config._base_dir = Path(base_dir)
    return config


def _odd_numbers(model: BaseModel, data: Any, path: str = ""):
    """``(key path, why)`` for each NaN/infinite number and each boolean given for a number
    (pydantic reads ``true`` as 1), anywhere in a validated config and its ``data``."""
    if isinstance(data, bool) and isinstance(model, int | float) and not isinstance(model, bool):
        yield path, f"expected a number, got {str(data).lower()}"
    elif isinstance(model, float) and not math.isfinite(model):
        yield path, f"expected a finite number, got {model}"
    elif isinstance(model, BaseModel) and isinstance(data, dict):
        for key in model.model_fields_set & set(data):
            if key != "options":  # a decoder's own options: its factory checks them
                yield from _odd_numbers(getattr(model, key), data[key],
                                        f"{path}.{key}" if path else key)
    elif isinstance(model, list | tuple) and isinstance(data, list | tuple):
        for i, (item, raw) in enumerate(zip(model, data)):
            yield from _odd_numbers(item, raw, f"{path}[{i}]")


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise RtbciError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise RtbciError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise RtbciError(f"{path}: not allowed to read it") from None
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RtbciError(f"{path}: line {line} is not UTF-8 text; save the config as UTF-8") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise RtbciError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path), path.resolve().parent)
