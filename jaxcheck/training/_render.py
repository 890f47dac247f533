"""Rendering shared by the results of the training diagnostics.

Every result in :mod:`jaxcheck.training` is a :class:`TrainingResult`: it
declares its text once (a :class:`jaxcheck.render.Doc`) and gets ``__str__``
wrapped to the terminal, ``_repr_html_`` and a strict-JSON ``to_dict()`` from
:mod:`jaxcheck.render` (which imports nothing from the checker).
Internal to :mod:`jaxcheck.training`: import the module by name
(``from jaxcheck.training import _render``); its functions are its interface.
"""

from __future__ import annotations

from typing import Any

from jaxcheck.render import Doc, Rendered, Table

__all__ = ["Doc", "Table", "TrainingResult", "count", "fmt"]


class TrainingResult(Rendered):
    """Base of the training half's results: :class:`jaxcheck.render.Rendered`
    (text, HTML, strict-JSON ``to_dict()`` from one ``_doc()``), with the
    result's ``name`` first in ``to_dict()`` when the class has one.

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Loss(TrainingResult):
        ...     loss: float
        ...     name = "loss"
        ...     def _doc(self) -> Doc:
        ...         return Doc(f"[ok] loss {self.loss:g}", ok=True)
        >>> Loss(2.5).to_dict(), str(Loss(2.5))
        ({'name': 'loss', 'loss': 2.5}, '[ok] loss 2.5')
    """

    def _data(self) -> dict[str, Any]:
        data = super()._data()
        name = getattr(self, "name", "")
        return {"name": name, **data} if name else data


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
