"""Config validation: every mistake is one line naming the key path."""

import pytest

from rtbci.cli import main
from rtbci.config import load_config, parse_config
from rtbci.errors import RtbciError

GOOD = """
[engine]
session = "lab1"
[[sources]]
name = "eeg"
kind = "lsl"
stream = { name = "BioSemi" }
buffer_seconds = 10
"""
DECODER = """
[[decoders]]
name = "bp"
model = "builtin:bandpower"
source = "eeg"
window_ms = 500
every_ms = 100
{}
"""


def test_good_config_is_parsed(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.engine.session == "lab1"
    src = config.sources[0]
    assert (src.kind, src.stream.as_dict(), src.buffer_seconds) == ("lsl", {"name": "BioSemi"},
                                                                     10.0)
    assert src.processing == ["clocksync", "dejitter"]


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace('session = "lab1"', 'sesion = "lab1"'), "engine.sesion: unknown key"),
    (GOOD.replace("buffer_seconds = 10", 'buffer_seconds = "long"'),
     "sources[0].buffer_seconds: Input should be a valid number"),
    (GOOD.replace("buffer_seconds = 10", "buffer_seconds = -1"),
     "sources[0].buffer_seconds: Input should be greater than 0"),
    ('[engine]\nsession = "x"\n', "sources: Field required"),
    ("sources = []\n", "sources: List should have at least 1 item"),
    (GOOD.replace('kind = "lsl"', 'kind = "bluetooth"'),
     "sources[0]: unknown kind 'bluetooth'; expected one of lsl, simulate"),
    (GOOD.replace('kind = "lsl"\n', ""), "sources[0]: missing key 'kind'"),
    (GOOD.replace('stream = { name = "BioSemi" }', "stream = {}"),
     "sources[0].stream: give at least one of name, type, source_id"),
    (GOOD.replace('stream = { name = "BioSemi" }\n', ""), "sources[0].stream: Field required"),
    (GOOD + GOOD.split("[[sources]]")[1].join(["[[sources]]", ""]),
     "sources[1].name: 'eeg' is used twice"),
    ("[[sources]\n", "not valid TOML"),
    (GOOD.replace("buffer_seconds = 10", "buffer_seconds = nan"), "sources[0].buffer_seconds:"),
    (GOOD.replace("buffer_seconds = 10", "buffer_seconds = true"),
     "sources[0].buffer_seconds: expected a number, got true"),
    (GOOD.replace("buffer_seconds = 10", "buffer_seconds = 1e9"),
     "sources[0].buffer_seconds: Input should be less than or equal to 3600"),
    (GOOD + '[[sinks]]\nkind = "console"\ninterval_s = inf\n',
     "sinks[0].interval_s: expected a finite number, got inf"),
    (GOOD.replace('name = "eeg"', 'name = "session"'),
     "sources[0].name: 'session' is reserved (the record sink writes session.json"),
    (GOOD + DECODER.format("").replace('name = "bp"', 'name = "stats"'),
     "decoders[0].name: 'stats' is reserved: the engine's own MQTT topic rtbci/<session>/stats "
     "(reserved: stats, status)"),
    (GOOD + DECODER.format("").replace('name = "bp"', 'name = "status"'),
     "decoders[0].name: 'status' is reserved: the engine's own MQTT topic "
     "rtbci/<session>/status"),
    (GOOD + DECODER.format('options = { clasifier = "lda.npz" }'),
     "decoders[0].options.clasifier: unknown option for builtin:bandpower; did you mean "
     "'classifier'? (options: bands, classifier)"),
    (GOOD + DECODER.format("options = { top_k = 3 }"),
     "decoders[0].options.top_k: unknown option for builtin:bandpower (options: bands, "
     "classifier)"),
    (GOOD + DECODER.format('on_marker = "stim"\noptions = { topk = 3 }').replace(
        'model = "builtin:bandpower"', 'model = "demo:motor-gnn"').replace(
        "window_ms = 500\nevery_ms = 100\n", ""),
     "decoders[0].options.topk: unknown option for a checkpoint; did you mean 'top_k'? "
     "(options: subject, top_k, importance)"),
    (GOOD + DECODER.format("").replace('"builtin:bandpower"', '"builtin:bandpowr"'),
     "decoders[0].model: unknown model 'builtin:bandpowr'; expected a checkpoint (.pt), "
     "builtin:bandpower or python:MODULE:FACTORY"),
    (GOOD + DECODER.format("budget_ms = -5"),
     "decoders[0].budget_ms: Input should be greater than 0"),
    (GOOD + DECODER.format("compute_threads = true"),
     "decoders[0].compute_threads: expected a number, got true"),
    (GOOD + DECODER.format("every_ms = inf").replace("every_ms = 100\n", ""),
     "decoders[0].every_ms: expected a finite number, got inf"),
    (GOOD + DECODER.format("").replace("window_ms = 500", "window_ms = 20000"),
     "decoders[0].window_ms: 20 s is longer than the buffer of source 'eeg' (buffer_seconds = "
     "10)"),
    (GOOD + '[[sinks]]\nkind = "record"\npath = "s/{sesion}"\n',
     "sinks[0].path: unknown {sesion}; the path may use {session}, {start}"),
    (GOOD + '[[sinks]]\nkind = "record"\npath = "s/{start:%Y}"\n', "sinks[0].path: unknown "
     "{start:%Y}"),
])
def test_each_mistake_is_one_line_naming_the_key(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"rtbci: error: {path}")
    assert expected in err


@pytest.mark.parametrize(("content", "expected"), [
    (b'[engine]\nsession = "caf\xe9"\n', "line 2 is not UTF-8 text; save the config as UTF-8"),
    (None, "is a directory, not a config file"),
])
def test_unreadable_config_is_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "c.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"rtbci: error: {path}: {expected}\n"


def test_missing_file_is_named(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such config file" in capsys.readouterr().err


def test_several_mistakes_give_one_line_each():
    with pytest.raises(RtbciError) as info:
        parse_config({"engine": {"x": 1}, "sources": [{"name": "a", "kind": "simulate",
                                                       "profile": "eeg32"}]})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "engine.x: unknown key" in lines[0]
    assert "sources[0].profile:" in lines[1] and "'eeg64'" in lines[1]


def test_the_readme_config_example_is_valid():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index('```toml\n[engine]\nsession = "lab1"') + len("```toml\n")
    import tomllib

    config = parse_config(tomllib.loads(readme[start:readme.index("```", start)]), "README")
    assert [s.kind for s in config.sources] == ["lsl", "simulate", "brainflow"]
    assert [s.kind for s in config.sinks] == ["mqtt", "lsl", "console", "record"]
    assert config.sources[0].preprocess.bandpass == (1, 40)


def test_the_old_names_of_placement_and_compute_threads_still_work_with_a_warning(caplog):
    """Issue 25: ``thread`` and ``threads`` were renamed ``placement`` and ``compute_threads``
    (unrelated meanings, neighbouring names); the old keys are accepted for one release, each
    with one warning line, and giving an old and a new name together is one error line."""
    import tomllib

    old = tomllib.loads(GOOD + DECODER.format('thread = "own"\nthreads = 2'))
    with caplog.at_level("WARNING", logger="rtbci"):
        decoder = parse_config(old).decoders[0]
    assert (decoder.placement, decoder.compute_threads) == ("own", 2)
    said = [r.getMessage() for r in caplog.records if "renamed" in r.getMessage()]
    assert said == ["decoder 'bp': 'thread' is renamed 'placement' (the old name goes in the "
                    "next release)", "decoder 'bp': 'threads' is renamed 'compute_threads' "
                    "(the old name goes in the next release)"]
    both = tomllib.loads(GOOD + DECODER.format('thread = "own"\nplacement = "own"'))
    with pytest.raises(RtbciError, match=r"decoders\[0\]: .*thread: renamed placement; give "
                       "only placement"):
        parse_config(both)
