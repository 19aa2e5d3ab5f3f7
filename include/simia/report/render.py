"""The report as Markdown and as one self-contained HTML page, rendered by Jinja2 from the
typed analysis.

Both documents are the same template, ``templates/_report.j2`` (the content: sections,
sentences, tables, plots), given a set of block macros per format: ``_markdown.j2``
(images by file name, beside the Markdown file) or ``_html.j2`` (every value escaped; the PNGs
embedded as base64 data URIs, so the page can be mailed or downloaded alone).
``report.md.j2`` and ``report.html.j2`` are the frames of the two documents.
"""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

import jinja2

from simia.report import formatting
from simia.report.model import Analysis

__all__ = ["render_html", "render_markdown"]

TEMPLATES = Path(__file__).with_name("templates")


@cache
def _environment(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=html,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.do"])
    env.filters.update(pct=formatting.pct, g=formatting.g, num=formatting.num,
                       ci=formatting.ci, interval=formatting.interval,
                       bounds=formatting.bounds, points=formatting.points,
                       effect=formatting.effect,
                       p=formatting.p_short, p_value=formatting.p_value,
                       json=formatting.to_json_text)
    return env


def render_markdown(a: Analysis, plots: dict[str, str]) -> str:
    """The report as Markdown; ``plots``: plot name -> file name (beside the document)."""
    text = _environment(False).get_template("report.md.j2").render(a=a, plots=plots)
    return text.rstrip("\n") + "\n"


def render_html(a: Analysis, plots: dict[str, str], plot_dir: str | Path) -> str:
    """The report as one HTML page, the plots (files in ``plot_dir``) embedded."""
    def data_uri(file_name: str) -> str:
        data = base64.b64encode((Path(plot_dir) / file_name).read_bytes()).decode()
        return f"data:image/png;base64,{data}"

    return _environment(True).get_template("report.html.j2").render(a=a, plots=plots,
                                                                   data_uri=data_uri)
