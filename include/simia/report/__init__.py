"""The experiment's answer: statistics over tau2 results, the report (Markdown, HTML,
JSON, plots) and the index of run folders the UI lists.

* :mod:`~simia.report.stats`: pass^k and bootstrap CIs (the per-checkpoint numbers);
* :mod:`~simia.report.load`: reading a run folder (through :class:`simia.layout.RunLayout`):
  every declared training run (level x replicate) and the declared analysis settings;
* :mod:`~simia.report.model`: the typed analysis (what the report's JSON holds);
* :mod:`~simia.report.analysis`: computing it from the loaded run; the headline is the
  verdict of the run-aware analysis (:func:`simia.analysis.analyze_runs`);
* :mod:`~simia.report.render` with ``templates/``: the Markdown and HTML (Jinja2);
* :mod:`~simia.report.plots`: the PNG plots;
* :mod:`~simia.report.build`: :func:`write_report`, all of the above for one run;
* :mod:`~simia.report.runs_index`: the run folders as the UI plugin lists them.

``from simia.report import write_report`` loads the report's modules on first use only,
so importing :mod:`simia.report.runs_index` or :mod:`simia.report.stats` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simia.report.build import write_report

__all__ = ["write_report"]


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from simia.report.build import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
