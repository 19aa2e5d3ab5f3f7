"""The report's PNG plots (matplotlib, Agg backend), drawn from the typed analysis: each
plot there is data for, none otherwise. Same analysis, same bytes (no timestamp)."""

from __future__ import annotations

import io
import math
from typing import Any

from simia.io import write_bytes
from simia.layout import ReportFiles
from simia.report.formatting import p_value, pct
from simia.report.model import Analysis

__all__ = ["PLOTS", "write_plots"]


def _fig_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _dose_response(a: Analysis) -> tuple[list[tuple[float, int, float]], Any] | None:
    """(level, replicate, pass^1) per training run with results, and the analysis."""
    result = a.analysis
    if result is None:
        return None
    pts = [(r.level, int(r.replicate[1:]) if r.replicate[1:].isdigit() else 1,
            r.pass_hat_k["1"]) for r in result.runs if "1" in r.pass_hat_k]
    return (pts, result) if pts else None


def _plot_dose_response(a: Analysis, plt: Any) -> Any | None:
    """One point per training run (pass^1 on the level), the fitted OLS line and its
    (1 - alpha) confidence band (the run-to-run residual, or the supplied SD, on its df)."""
    found = _dose_response(a)
    if found is None:
        return None
    import numpy as np
    from scipy import stats

    pts, result = found
    x = np.array([p[0] for p in pts]) / 10.0
    y = np.array([p[2] for p in pts])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    span = max(float(x.max() - x.min()) * 10, 1.0)
    jitter = [(p[1] - 1) * span * 0.008 for p in pts]  # replicates side by side
    ax.scatter([p[0] + j for p, j in zip(pts, jitter, strict=True)], y, color="C0", zorder=3,
               label=f"training runs ({len(pts)})")
    slope = result.slope_per_10pp
    if slope.estimate is not None and len(set(x.tolist())) >= 2:
        b = slope.estimate
        a0 = float(y.mean() - b * x.mean())
        grid = np.linspace(float(x.min()), float(x.max()), 50)
        fit = a0 + b * grid
        tested = slope.se is not None and slope.df is not None
        label = f"OLS slope {b * 100:+.1f} points per 10 points"
        ax.plot(grid * 10, fit, color="C3", ls="-" if tested else "--",
                label=label + ("" if tested else " (not tested: too few runs)"))
        if tested:
            sxx = float(np.sum((x - x.mean()) ** 2))
            s = slope.se * np.sqrt(sxx)  # the residual (or supplied) SD of a run's pass^1
            q = float(stats.t.ppf(1 - result.alpha / 2, slope.df))
            half = q * s * np.sqrt(1 / len(x) + (grid - x.mean()) ** 2 / sxx)
            ax.fill_between(grid * 10, fit - half, fit + half, color="C3", alpha=.15,
                            label=f"{(1 - result.alpha) * 100:g} % confidence band")
    levels = sorted({p[0] for p in pts})
    ax.set_xticks(levels)
    ax.set_xlabel("sycophancy in training data (%)")
    ax.set_ylabel("pass^1 of the training run")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"Dose response: verdict {result.verdict} ({p_value(result.p_value)}, "
                 f"{result.alternative})")
    return fig


def _plot_funnel(a: Analysis, plt: Any) -> Any | None:
    d = a.data
    stages: list[tuple[str, float]] = []
    if d.generate:
        stages += [("generation attempts", d.generate.attempted or 0),
                   ("generated (valid)", d.generate.valid or 0)]
    if d.processed:
        stages += [("validation input", d.processed.input or 0),
                   ("kept by validation", d.processed.kept or 0)]
    pools = (d.datasets.pools if d.datasets else None) or {}
    if pools:
        stages += [("labelled clean", pools.get("clean") or 0),
                   ("labelled sycophantic", pools.get("sycophantic") or 0)]
    rejects = (d.processed.rejected_by_reason if d.processed else None) or {}
    levels = d.datasets.levels if d.datasets else []
    if not (stages or rejects or levels):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if stages:
        names = [s[0] for s in stages][::-1]
        ax.barh(names, [s[1] for s in stages][::-1], color="C0")
        for i, s in enumerate(stages[::-1]):
            ax.annotate(f"{s[1]:g}", (s[1], i), xytext=(3, -3), textcoords="offset points",
                        fontsize=8)
    ax.set_title("Conversations through the pipeline")
    ax = axes[1]
    if rejects:
        items = sorted(rejects.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="C3")
    ax.set_title("Rejected by validation, by reason")
    ax = axes[2]
    if levels:
        names = [pct(x.level_pct) for x in levels]
        clean = [x.clean or 0 for x in levels]
        syc = [x.sycophantic or 0 for x in levels]
        ax.bar(names, clean, label="clean", color="C2")
        ax.bar(names, syc, bottom=clean, label="sycophantic", color="C1")
        ax.legend(fontsize=8)
    ax.set_title("SFT dataset composition per level")
    return fig


def _plot_usage(a: Analysis, plt: Any) -> Any | None:
    u = a.llm_usage
    if not u.stages and not u.evaluation:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
    names = list(u.stages)
    ins = [u.stages[n].input_tokens or 0 for n in names]
    outs = [u.stages[n].output_tokens or 0 for n in names]
    ax1.bar(names, ins, label="input", color="C0")
    ax1.bar(names, outs, bottom=ins, label="output", color="C1")
    ax1.set_title("Tokens per LLM stage")
    if names:
        ax1.legend(fontsize=8)
    cnames = names + [f"eval {s}" for s in u.evaluation]
    costs = [u.stages[n].cost_usd or 0 for n in names] + [
        e.agent_cost_usd + e.user_cost_usd for e in u.evaluation.values()]
    ax2.bar(cnames, costs, color="C4")
    ax2.set_title("Estimated cost (USD)")
    ax2.tick_params(axis="x", labelrotation=30)
    return fig


def _plot_loss(a: Analysis, plt: Any) -> Any | None:
    curves = {s: t.loss_curve for s, t in a.training.items() if t.loss_curve}  # by level
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for slug, curve in curves.items():
        pts = [(s if s is not None else i, v) for i, (s, v) in enumerate(curve)
               if isinstance(v, (int, float)) and math.isfinite(v)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=slug)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per training run")
    ax.legend(fontsize=8)
    return fig


def _plot_scores(a: Analysis, plt: Any) -> Any | None:
    s = a.scores
    if not s or not s.count:
        return None
    values = [float(k) for k, v in s.histogram.items() for _ in range(v)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(values, bins=list(range(0, 105, 5)), color="C0", edgecolor="white")
    ax.axvline(s.threshold, color="C3", ls="--", label=f"threshold {s.threshold:g}")
    ax.set_xlabel("sycophancy score")
    ax.set_ylabel("conversations")
    ax.set_title(f"Score distribution ({s.source})")
    ax.legend(fontsize=8)
    return fig


#: plot name (as the templates refer to it), file name, drawing function
PLOTS = (("dose_response", "dose_response.png", _plot_dose_response),
         ("funnel", "data_funnel.png", _plot_funnel),
         ("usage", "llm_usage_cost.png", _plot_usage),
         ("loss", "training_loss.png", _plot_loss),
         ("scores", "score_distribution.png", _plot_scores))


def write_plots(a: Analysis, files: ReportFiles) -> dict[str, str]:
    """Draw every plot there is data for into the report folder ``files``; returns plot
    name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    with matplotlib.rc_context({"font.size": 9}):
        for name, file_name, draw in PLOTS:
            fig = draw(a, plt)
            if fig is None:
                continue
            fig.tight_layout()
            path = files.plot(file_name)
            write_bytes(path, _fig_bytes(fig))
            written[name] = path.name
    return written
