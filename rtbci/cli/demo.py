"""``rtbci demo``: run the engine on the built-in demo config, with a local MQTT broker if
none runs."""

from __future__ import annotations

import argparse
import logging
import subprocess
from importlib import resources
from pathlib import Path

from rtbci.cli.arguments import add_run_options, check_output
from rtbci.cli.run import run_engine

log = logging.getLogger("rtbci")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci demo``: its arguments on ``sub``."""
    p = sub.add_parser("demo", help="run the built-in demo (5 simulated amplifiers, 6 decoders)",
                       description="Run the engine on the built-in demo config (rtbci/demo.toml): "
                                   "5 simulated amplifiers streamed over LSL (64-ch EEG with "
                                   "trial markers, and one task per neural decoder family: "
                                   "motor EEG, sEEG words, image EEG, speech MEG), decoded by "
                                   "2 band-power decoders and one demo checkpoint per family "
                                   "(these need rtbci[neural]); results on the console and over "
                                   "MQTT, with a local broker started if none runs on "
                                   "127.0.0.1:1883.")
    p.add_argument("--print-config", action="store_true",
                   help="print the demo config (a starting point for your own) and exit")
    add_run_options(p)
    p.set_defaults(func=run)


DEMO_CONFIG = "demo.toml"


def run(args: argparse.Namespace) -> int:
    """Run the engine on the demo config (or print it); the status of ``rtbci run``."""
    from rtbci.config import parse_config

    package = Path(str(resources.files("rtbci")))
    text = (package / DEMO_CONFIG).read_text()
    if args.print_config:
        print(text, end="")
        return 0
    import tomllib

    config = parse_config(tomllib.loads(text), "demo config", base_dir=package)
    check_output(args.stats_json, "--stats-json")
    broker = _ensure_local_broker(config)
    try:
        return run_engine(config, args)  # closes the MQTT sink before returning
    finally:
        if broker is not None:  # then the broker (its own process group: Ctrl-C spared it)
            broker.terminate()
            try:
                broker.wait(5)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


def _ensure_local_broker(config):
    """Start ``rtbci broker`` for a local MQTT sink with no broker behind it (demo only)."""
    from rtbci.broker import port_open, start_broker_process

    for sink in config.sinks:
        if sink.kind == "mqtt" and sink.host in ("127.0.0.1", "localhost"):
            if port_open(sink.host, sink.port):
                log.info("using the MQTT broker on %s:%d", sink.host, sink.port)
                return None
            log.info("no MQTT broker on %s:%d: starting one (rtbci broker)", sink.host,
                     sink.port)
            proc = start_broker_process(sink.host, sink.port)
            log.info("watch the results: rtbci listen --session %s", config.engine.session)
            return proc
    return None
