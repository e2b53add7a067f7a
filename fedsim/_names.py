"""Tell sketchgrad's ``adapters`` package from other distributions' packages of that name.

The import names ``sketchlib``, ``adapters`` and ``fedsim`` are also used by other
distributions on PyPI (AdapterHub's ``adapters``, installed beside transformers, is the
common one).  Installed in one environment, one package shadows or overwrites the
other, and fedsim would fail later with a puzzling error.  :func:`check_adapters`
looks at the ``adapters`` that Python would import, without importing it, and stops
with a message that says what happened and what to do.
"""
import importlib.util
import re
import sys

from .errors import FedsimError

__all__ = ["ForeignPackageError", "check_adapters", "MARKER"]

#: The line of ``adapters/__init__.py`` that marks sketchgrad's package.
MARKER = '__distribution__ = "sketchgrad"'
_MARKER_RE = re.compile(r'^__distribution__\s*=\s*["\']sketchgrad["\']', re.MULTILINE)


class ForeignPackageError(FedsimError, ImportError):
    """The ``adapters`` on the path belongs to another distribution."""


def _message(where):
    """What happened and what to do."""
    return (f"fedsim needs sketchgrad's 'adapters' package, but Python finds another package named "
            f"'adapters' at {where} (AdapterHub's adapters for transformers, for example, has this import "
            f"name). Both cannot live in one environment: install sketchgrad in its own virtual "
            f"environment (python -m venv .venv && .venv/bin/pip install 'sketchgrad[fedsim]'), or "
            f"remove the other package there (pip uninstall adapters) and reinstall sketchgrad.")


def check_adapters():
    """Raise unless ``import adapters`` would give sketchgrad's package (the other package is never imported).

    Raises
    ------
    ForeignPackageError
        ``adapters`` is missing or is another distribution's package.
    """
    module = sys.modules.get("adapters")
    if module is not None:
        if getattr(module, "__distribution__", None) != "sketchgrad":
            raise ForeignPackageError(_message(getattr(module, "__file__", None) or repr(module)))
        return
    try:
        spec = importlib.util.find_spec("adapters")
    except (ImportError, ValueError) as exc:
        raise ForeignPackageError(_message(f"(unreadable: {exc})")) from None
    if spec is None:
        raise ForeignPackageError("fedsim needs sketchgrad's 'adapters' package, which is not installed beside "
                                  "it; reinstall sketchgrad (pip install 'sketchgrad[fedsim]')")
    origin = spec.origin if spec.has_location else None
    try:
        with open(origin, encoding="utf-8") as fh:
            ours = _MARKER_RE.search(fh.read()) is not None
    except (OSError, TypeError, UnicodeDecodeError):  # no file (namespace package), unreadable, not text
        ours = False
    if not ours:
        where = origin or ", ".join(spec.submodule_search_locations or []) or spec.name
        raise ForeignPackageError(_message(where))
