"""Inference backends, found by name: `runtime/backends/<name>_backend.py` defines `BACKEND`, a `Backend` subclass.

Adding a backend is adding one such file; nothing else changes. Modules are imported only when asked for,
so a daemon running onnxruntime never pays for importing OpenVINO.
"""

from __future__ import annotations

import importlib
import pkgutil

from runtime.backends.base import Backend
from runtime.errors import UserError

__all__ = ["Backend", "backend_names", "get_backend"]
_SUFFIX = "_backend"


def backend_names() -> list[str]:
    return sorted(m.name.removesuffix(_SUFFIX) for m in pkgutil.iter_modules(__path__) if m.name.endswith(_SUFFIX))


def get_backend(name: str) -> type[Backend]:
    if name not in backend_names():
        raise UserError(f"unknown classifier backend {name!r} (known: {', '.join(backend_names())})")
    return importlib.import_module(f"{__name__}.{name}{_SUFFIX}").BACKEND
