"""What ``rtbci train auto`` shows of its search: the printed table (:func:`format_table`)
and ``CKPT.png`` (:func:`plot_table`), both from the metrics' ``auto`` document."""

from __future__ import annotations

__all__ = ["format_table", "plot_table"]


def format_table(auto: dict, channels: dict | None = None) -> list[str]:
    """The table as printed by ``rtbci train auto``: one line per candidate (stopped and
    skipped ones say why), the choice marked (``tie → simpler`` when it was preferred to a
    best mean within one standard error), then chance and the input channels (``channels``:
    the metrics' ``used`` and ``left_out``). Each score is the mean ± sd over folds and the
    95 % binomial interval of all its held-out windows (``ci95``,
    :func:`rtbci.scoring.chance_figures`)."""
    choice = auto["choice"]
    lines = [f"{'family':<10} {'preprocessing':<20} {'accuracy':>15}  {'95 % CI':<11}  "
             f"{'time':>7}"]
    for r in auto["table"]:
        lines.append(f"{r['family']:<10} {r['preprocessing']:<20} {_score(r):>15}  "
                     f"{_interval(r):<11}  {_took(r):>7}{_mark(r, choice)}"
                     f"{_stopped(r, auto['folds'])}")
    budget = auto.get("budget")
    uniform = auto.get("chance_uniform")
    lines.append(f"chance {auto['chance']:.3f} (majority class"
                 + (f"; 1/n {uniform:.3f}" if uniform else "") + f"); {auto['folds']}-fold "
                 f"cross-validation, {auto['seconds']:.0f} s in all"
                 + (f" (budget {budget:g} s)" if budget else ""))
    if channels is not None:
        from rtbci.models.channels import summary

        lines.append(summary(channels["used"], channels["left_out"]))
    return lines


def _score(row: dict) -> str:
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    if "error" in row:
        return f"failed: {row['error']}"
    return f"{row['accuracy']:.3f} ± {row['sd']:.3f}" if "accuracy" in row else "-"


def _interval(row: dict) -> str:
    """``0.581–0.685``: the row's 95 % binomial interval; empty without one."""
    if "ci95" not in row:
        return ""
    low, high = row["ci95"]
    return f"{low:.3f}–{high:.3f}"


def _stopped(row: dict, folds: int) -> str:
    if "stopped" not in row:
        return ""
    return f"  stopped after {row.get('folds', 0)}/{folds} folds: {row['stopped']}"


def _took(row: dict) -> str:
    return f"{row['seconds']:6.1f}s" if "seconds" in row else ""


def _mark(row: dict, choice: dict) -> str:
    name = f"{row['family']} / {row['preprocessing']}"
    if (row["family"], row["preprocessing"]) == (choice["family"], choice["preprocessing"]):
        tie = choice.get("tie")
        return " ← chosen" + (f" (tie → simpler: within 1 SE ({tie['se']:.3f}) of "
                              f"{tie['with']})" if tie else "")
    if choice.get("tie") and choice["tie"]["with"] == name:
        return " (best mean; tied)"
    return ""


def plot_table(path, auto: dict) -> None:
    """``CKPT.png``: cross-validated accuracy (mean ± sd) per candidate, with chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in auto["table"] if "accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    names = [f"{r['family']} / {r['preprocessing']}" for r in rows]
    chosen = [(r["family"], r["preprocessing"]) == (auto["choice"]["family"],
                                                   auto["choice"]["preprocessing"])
              for r in rows]
    ax.barh(names, [r["accuracy"] for r in rows], xerr=[r["sd"] for r in rows],
            color=["C1" if c else "C0" for c in chosen])
    ax.axvline(auto["chance"], color="0.4", linestyle="--", label="chance")
    ax.set(xlim=(0, 1), xlabel=f"accuracy ({auto['folds']}-fold cross-validation)",
           title="rtbci train auto")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
