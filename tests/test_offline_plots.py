"""``dvc plots show`` renders offline: the configured page loads the vendored Vega libraries, no CDN."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_plots_template_loads_only_vendored_scripts():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    template = (ROOT / ".dvc" / config["plots"]["html_template"]).resolve()  # DVC resolves it from .dvc/
    page = template.read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # {scripts} would insert DVC's CDN tags
    sources = re.findall(r'<script src="([^"]+)"', page)
    assert [Path(s).name.split("@")[0] for s in sources] == ["vega", "vega-lite", "vega-embed"]
    output_dir = ROOT / "dvc_plots"  # dvc plots show's default --out; the paths are relative to it
    for source in sources:
        assert not source.startswith(("http:", "https:", "//")), source
        assert (output_dir / source).resolve().is_file(), source
    assert "/dvc_plots/" in (ROOT / ".gitignore").read_text().splitlines()
