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


def _plot_pass_k(a: Analysis, plt: Any) -> Any | None:
    rows = [(r.level, r.stats) for r in a.levels if r.stats is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ks = sorted({int(k) for _, s in rows for k in s.pass_hat_k})
    for k in ks:
        pts = [(lv, s.pass_hat_k[str(k)]) for lv, s in rows if str(k) in s.pass_hat_k]
        x = [p[0] for p in pts]
        y = [p[1].estimate for p in pts]
        err = [[p[1].estimate - p[1].low for p in pts], [p[1].high - p[1].estimate for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=f"pass^{k}")
    tau2 = [(lv, s.tau2_pass_hat_k.get("1")) for lv, s in rows
            if s.tau2_pass_hat_k.get("1") is not None]
    if tau2:
        ax.plot([t[0] for t in tau2], [t[1] for t in tau2], "k--", marker="x", alpha=.6,
                label="tau2's pass^1 (drops infra errors)")
    ax.set_xlabel("sycophancy in training data (%)")
    ax.set_ylabel("pass^k (95 % bootstrap CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks([lv for lv, _ in rows])
    ax.legend(fontsize=8)
    ax.set_title("Task success by sycophancy level")
    return fig


def _plot_paired(a: Analysis, plt: Any) -> Any | None:
    rows = [(r.level, r.paired_vs_reference) for r in a.levels if r.paired_vs_reference]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [lv for lv, _ in rows]
    pcs = [pc for _, pc in rows]
    y = [p.mean_diff for p in pcs]
    err = [[p.mean_diff - p.ci.low for p in pcs], [p.ci.high - p.mean_diff for p in pcs]]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4, color="C3")
    ax.axhline(0, color="k", lw=.8)
    for xi, yi, p in zip(x, y, pcs, strict=True):
        ax.annotate(p_value(p.p_two_sided), (xi, yi), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ax.set_xticks(x)
    ax.set_xlabel("sycophancy in training data (%)")
    ax.set_ylabel(f"Δ pass^1 vs {pct(a.reference_level)}")
    ax.set_title("Paired difference per level (95 % CI over tasks)")
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
    curves = {s: t.loss_curve for s, t in a.training.items() if t.loss_curve}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for slug, curve in curves.items():
        pts = [(s if s is not None else i, v) for i, (s, v) in enumerate(curve)
               if isinstance(v, (int, float)) and math.isfinite(v)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=slug)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per level")
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
PLOTS = (("pass_k", "pass_k_by_level.png", _plot_pass_k),
         ("paired", "paired_diff_vs_reference.png", _plot_paired),
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
