"""The paper's figures and tables, rendered from run records beside ``paper/published.yaml``.

``render_report(runs_dir, published_path, out_dir)`` writes ``figures/`` (PDF + PNG), ``tables/`` (Markdown
+ LaTeX), ``README.md`` and ``report_manifest.json``. Importing this package does not import matplotlib.
"""

from __future__ import annotations


def render_report(*args, **kwargs):
    """See :func:`smoothnet.report.build.render_report`."""
    from smoothnet.report.build import render_report as _render

    return _render(*args, **kwargs)


__all__ = ["render_report"]
