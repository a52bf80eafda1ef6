"""Tables are built once as rows (a list of dicts with display-ready cells); these render them per medium.

The terminal gets `text_table`, report.md / the model card / Prefect markdown get `markdown_table`, and a
Prefect table artifact takes the rows as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMERIC = re.compile(r"[-+]?[\d.,]+(e[-+]?\d+)?%?( ± [\d.]+)?|-")


def pct(value: float | None, digits: int = 1) -> str:
    """0.8123 -> '81.2%'; None -> '-'."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, spec: str) -> str:
    """A number formatted with `spec`; None -> '-'."""
    return "-" if value is None else format(value, spec)


def _columns(rows: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    if columns:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Aligned plain-text columns: text left, numbers right."""
    names = _columns(rows, columns)
    cells = [[_cell(row.get(name)) for name in names] for row in rows]
    widths = [max([len(name)] + [len(line[i]) for line in cells]) for i, name in enumerate(names)]
    numeric = [bool(cells) and all(_NUMERIC.fullmatch(line[i]) for line in cells) for i in range(len(names))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(names)] + [line(values) for values in cells])


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    names = _columns(rows, columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row.get(name)).replace("|", "\\|") for name in names) + " |" for row in rows]
    return "\n".join(lines)
