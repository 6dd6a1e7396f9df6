"""YAML reading that agrees with DVC on numbers.

PyYAML implements YAML 1.1, where ``1e-05`` (no dot) is a *string*; DVC (ruamel, YAML 1.2) reads and writes
it as a float — dvc.lock stores ``delta: 1e-05``. Reading params.yaml or dvc.lock with plain
``yaml.safe_load`` would then see a string where DVC sees a number. This loader resolves YAML 1.2 floats.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Yaml12SafeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's float syntax (exponent without a dot, e.g. ``1e-5``)."""


_Yaml12SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as DVC does for numbers (``1e-5`` is a float)."""
    return yaml.load(text, Loader=_Yaml12SafeLoader)  # noqa: S506 - a SafeLoader subclass
