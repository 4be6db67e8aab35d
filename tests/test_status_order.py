"""The engine's status lists sources and decoders in config order (the display opens on the
first configured source, whichever stream connected first)."""

from types import SimpleNamespace

from rtbci.engine import in_config_order


def test_status_entries_follow_the_config_and_unconfigured_names_go_last():
    configs = [SimpleNamespace(name=n) for n in ("eeg", "motor", "words")]
    connected = {"words": 3, "extra": 4, "eeg": 1, "motor": 2}  # in the order they connected
    assert list(in_config_order(connected, configs)) == ["eeg", "motor", "words", "extra"]
    assert in_config_order(connected, configs)["motor"] == 2
