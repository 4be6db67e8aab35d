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
])
def test_each_mistake_is_one_line_naming_the_key(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"rtbci: error: {path}")
    assert expected in err


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
    assert [s.kind for s in config.sources] == ["lsl", "simulate"]
    assert [s.kind for s in config.sinks] == ["mqtt", "lsl", "console", "record"]
    assert config.sources[0].preprocess.bandpass == (1, 40)
