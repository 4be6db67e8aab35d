"""Human-readable live statistics (the lines ``rtbci run`` prints every second)."""

from __future__ import annotations


def format_stream_line(name: str, stats: dict) -> str:
    lat = stats.get("ingest_latency_ms") or {}
    return (f"{name:<12} {stats.get('state', ''):<9} {stats['samples']:>10} samples "
            f"{stats['rate_hz']:>9.1f} Hz  gaps {stats['gaps']:<3} overflows "
            f"{stats['overflows']:<3} markers {stats.get('markers', 0):<4} "
            f"ingest p50 {lat.get('p50', float('nan')):5.2f} ms "
            f"p99 {lat.get('p99', float('nan')):5.2f} ms")


def print_live_stats(engine) -> None:
    stats = engine.stats()
    for name, entry in stats["streams"].items():
        print(format_stream_line(name, entry), flush=True)
