"""The bench's receiver: a separate process stamping every result on arrival.

LSL: opens every outlet whose name starts with ``--lsl PREFIX`` (waits for ``--outlets N``),
one thread per outlet blocking in ``pull_sample``. MQTT: subscribes to ``rtbci/bench/#`` on
``--mqtt PORT`` (TCP_NODELAY). Prints ``ready`` once listening (MQTT: at the first result);
on SIGTERM (or after ``--duration``) saves rows ``(receive time, result timestamp, outlet
index, seq)`` to ``--save`` (``.npy``; times on the LSL clock, seq −1 where the result
carries none).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

import numpy as np
import pylsl


def listen_lsl(prefix: str, n: int, rows: list, stop: threading.Event) -> None:
    """Resolve ``n`` outlets named ``PREFIX…`` and stamp every sample each one delivers."""
    found: dict[str, pylsl.StreamInfo] = {}
    deadline = time.monotonic() + 30
    while len(found) < n and time.monotonic() < deadline and not stop.is_set():
        for info in pylsl.resolve_bypred(f"starts-with(name,'{prefix}')", 0, 0.5):
            found.setdefault(info.name(), info)
    for index, name in enumerate(sorted(found)):
        inlet = pylsl.StreamInlet(found[name], max_buflen=30)
        inlet.open_stream(timeout=10)
        seq_channel = inlet.info().channel_count() - 2 if found[name].type() == "rtbci.result" \
            else -1
        threading.Thread(target=_pull, args=(inlet, index, seq_channel, rows, stop),
                         daemon=True).start()
    print("ready" if found else "none", flush=True)


def _pull(inlet, index: int, seq_channel: int, rows: list, stop: threading.Event) -> None:
    clock = pylsl.local_clock
    while not stop.is_set():
        sample, stamp = inlet.pull_sample(timeout=0.2)
        if stamp is not None:
            now = clock()
            rows.append((now, stamp, index, sample[seq_channel] if seq_channel >= 0 else -1))


def listen_mqtt(port: int, rows: list, stop: threading.Event) -> None:
    """Subscribe to every rtbci result of session ``bench`` on a local broker."""
    import socket

    import paho.mqtt.client as mqtt

    from rtbci.messages import decode

    clock, names = pylsl.local_clock, {}

    def on_message(client, userdata, msg):
        now = clock()
        if msg.topic.endswith(("/status", "/stats")):
            return
        m = decode(msg.payload)
        if not names:
            print("ready", flush=True)  # results flow: the engine is up
        index = names.setdefault(m["decoder"], len(names))
        rows.append((now, m["window_end"], index, m["seq"]))

    def on_connect(client, *args):
        client.subscribe("rtbci/bench/#")

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message, client.on_connect = on_message, on_connect
    client.connect("127.0.0.1", port)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    stop.wait()
    client.loop_stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lsl", help="outlet name prefix")
    p.add_argument("--outlets", type=int, default=1)
    p.add_argument("--mqtt", type=int, help="broker port")
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--save", required=True)
    a = p.parse_args(argv)
    rows: list[tuple] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if a.mqtt:
        threading.Thread(target=listen_mqtt, args=(a.mqtt, rows, stop), daemon=True).start()
    else:
        listen_lsl(a.lsl, a.outlets, rows, stop)
    stop.wait(a.duration)
    stop.set()
    np.save(a.save, np.array(rows, dtype=float).reshape(-1, 4))


if __name__ == "__main__":
    main()
