"""AUROC of each statistic for a two-label set (e.g. human / machine), its table, and the ROC plot (PNG)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llamakit.errors import LlamakitError


@dataclass
class Auroc:
    stat: str
    auroc: float | None  # P(score of a positive > score of a negative), ties count half; None: too few values
    n_pos: int
    n_neg: int

    @property
    def best_direction(self) -> str:
        """'higher' when a larger value points to the positive label, else 'lower' (AUROC below 0.5)."""
        return "higher" if self.auroc is None or self.auroc >= 0.5 else "lower"


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """Mann-Whitney AUROC with average ranks for ties; None without at least one value on each side."""
    if not pos or not neg:
        return None
    values = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum_pos = 0.0
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j][0] == values[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2  # 1-based ranks i+1..j share their mean
        rank_sum_pos += avg_rank * sum(1 for k in range(i, j) if values[k][1])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_curve(pos: Sequence[float], neg: Sequence[float]) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) sweeping the threshold from high to low."""
    points = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg], key=lambda x: -x[0])
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0
    i = 0
    while i < len(points):
        j = i
        while j < len(points) and points[j][0] == points[i][0]:
            tp += points[j][1]
            fp += 1 - points[j][1]
            j += 1
        fpr.append(fp / len(neg))
        tpr.append(tp / len(pos))
        i = j
    return fpr, tpr


def positive_label(labels: Sequence[Any]) -> tuple[Any, Any]:
    """(positive, negative) of a two-valued label column: 'machine'-like names, True or 1 are positive."""
    distinct = sorted(set(labels), key=lambda v: (str(type(v)), str(v)))
    if len(distinct) != 2:
        shown = ", ".join(repr(v) for v in distinct[:5])
        raise LlamakitError(f"label_field needs exactly two labels, found {len(distinct)} ({shown})",
                            "give each text one of two labels (e.g. human / machine), or leave label_field out")
    for cand in distinct:
        if cand is True or cand == 1 or str(cand).lower() in ("machine", "generated", "ai", "model", "fake", "1"):
            return cand, next(v for v in distinct if v != cand)
    return distinct[1], distinct[0]


def auroc_table(rows: Sequence[dict[str, Any]], label_field: str, stats: Sequence[str]) -> tuple[list[Auroc], Any, Any]:
    """AUROC per statistic over the rows (rows where a statistic is null leave it out)."""
    labels = [r[label_field] for r in rows]
    pos_label, neg_label = positive_label(labels)
    table = []
    for s in stats:
        pos = [r[s] for r in rows if r[label_field] == pos_label and r.get(s) is not None]
        neg = [r[s] for r in rows if r[label_field] == neg_label and r.get(s) is not None]
        table.append(Auroc(s, auroc(pos, neg), len(pos), len(neg)))
    return table, pos_label, neg_label


def format_table(table: Sequence[Auroc], pos_label: Any, neg_label: Any) -> list[str]:
    """Plain-text lines: one per statistic, best separation first."""
    most = max((a.n_pos + a.n_neg for a in table), default=0)

    def order(a: Auroc) -> tuple[bool, float]:
        # a statistic defined (not null) for fewer than half the texts says little: it goes last, marked
        return (a.n_pos + a.n_neg >= most / 2, -1.0 if a.auroc is None else abs(a.auroc - 0.5))

    lines = [f"AUROC for label {pos_label!r} (positive) vs {neg_label!r}; 0.5 = no separation, "
             f"below 0.5 = lower values point to {pos_label!r}",
             f"{'statistic':<14} {'AUROC':>6}  {'texts':>11}  direction"]
    for a in sorted(table, key=order, reverse=True):
        value = "   n/a" if a.auroc is None else f"{a.auroc:6.3f}"
        few = "  (null for most texts)" if a.n_pos + a.n_neg < most / 2 else ""
        lines.append(f"{a.stat:<14} {value}  {a.n_pos:>5}/{a.n_neg:<5}  "
                     + (f"{a.best_direction} = {pos_label}" if a.auroc is not None else "undefined") + few)
    return lines


def write_report(rows: Sequence[dict[str, Any]], label_field: str, stats: Sequence[str],
                 out_path: Path) -> tuple[list[str], Path, Path]:
    """Write OUT.auroc.txt and OUT.roc.png next to the output; returns (table lines, txt path, png path)."""
    table, pos_label, neg_label = auroc_table(rows, label_field, stats)
    lines = format_table(table, pos_label, neg_label)
    txt = out_path.with_name(out_path.stem + ".auroc.txt")
    png = out_path.with_name(out_path.stem + ".roc.png")
    txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_roc(rows, label_field, [a for a in table if a.auroc is not None], pos_label, neg_label, png)
    return lines, txt, png


def plot_roc(rows: Sequence[dict[str, Any]], label_field: str, table: Sequence[Auroc], pos_label: Any,
             neg_label: Any, png: Path) -> None:
    """ROC curves of every statistic in one PNG (matplotlib, Agg: no display needed on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    for a in table:
        pos = [r[a.stat] for r in rows if r[label_field] == pos_label and r.get(a.stat) is not None]
        neg = [r[a.stat] for r in rows if r[label_field] == neg_label and r.get(a.stat) is not None]
        sign = 1.0 if a.best_direction == "higher" else -1.0  # plot each in its separating direction
        fpr, tpr = roc_curve([sign * v for v in pos], [sign * v for v in neg])
        shown = a.auroc if sign > 0 else 1 - a.auroc  # type: ignore[operator]
        ax.plot(fpr, tpr, label=f"{a.stat}{'' if sign > 0 else ' (lower)'}: {shown:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"false positive rate ({neg_label} called {pos_label})")
    ax.set_ylabel(f"true positive rate ({pos_label} found)")
    ax.set_title(f"ROC: {pos_label} vs {neg_label}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
