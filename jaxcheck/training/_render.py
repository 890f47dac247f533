"""Text, dict and HTML rendering shared by the results of the training diagnostics.

Every result in :mod:`jaxcheck.training` prints as text, converts to plain Python
(``to_dict``) and shows as HTML in a notebook (``_repr_html_``) with these helpers.
Internal to :mod:`jaxcheck.training`: import the module by name
(``from jaxcheck.training import _render``); its functions are its interface.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "count",
    "dataclass_to_dict",
    "fmt",
    "html_card",
    "html_table",
    "to_builtin",
]


def to_builtin(value: Any) -> Any:
    """Converts numpy/jax scalars and arrays, tuples and dicts to plain Python.

    Examples:
        >>> to_builtin({"a": np.float32(0.5), "b": (np.arange(2), 3)})
        {'a': 0.5, 'b': [[0, 1], 3]}
    """
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass instance (and the dataclasses inside it) as plain Python.

    Examples:
        >>> @dataclasses.dataclass
        ... class R:
        ...     loss: float
        ...     curve: tuple
        >>> dataclass_to_dict(R(np.float64(2.5), (1, 2)))
        {'loss': 2.5, 'curve': [1, 2]}
    """
    out = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[field.name] = dataclass_to_dict(value)
        elif (
            isinstance(value, (list, tuple))
            and value
            and dataclasses.is_dataclass(value[0])
        ):
            out[field.name] = [dataclass_to_dict(v) for v in value]
        else:
            out[field.name] = to_builtin(value)
    return out


def _status_html(passed: bool | None, label: str | None = None) -> str:
    if passed is None:
        color, text = "#666", label or "n/a"
    elif passed:
        color, text = "#1a7f37", label or "PASS"
    else:
        color, text = "#cf222e", label or "FAIL"
    return f'<b style="color:{color}">{html.escape(text)}</b>'


def html_card(
    title: str, passed: bool | None, body_text: str, label: str | None = None
) -> str:
    """A verdict (green PASS, red FAIL or ``label``), a title and a text body.

    Examples:
        >>> html_card("initial loss", True, "at chance")[:40]
        '<div style="font-family:monospace"><b st'
    """
    return (
        '<div style="font-family:monospace">'
        f"{_status_html(passed, label)} <b>{html.escape(title)}</b>"
        f'<pre style="white-space:pre-wrap">{html.escape(body_text)}</pre></div>'
    )


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table with escaped cells.

    Examples:
        >>> html_table(["a"], [[1]])
        '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>'
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(x: float | None, spec: str = ".4g") -> str:
    """``format(x, spec)``, or ``"-"`` for ``None``.

    Examples:
        >>> fmt(2.302585), fmt(None), fmt(1e-3, ".0e")
        ('2.303', '-', '1e-03')
    """
    if x is None:
        return "-"
    return format(float(x), spec)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1.

    Examples:
        >>> count(1, "layer"), count(3, "layer"), count(2, "leaf", "leaves")
        ('1 layer', '3 layers', '2 leaves')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
