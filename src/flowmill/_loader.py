"""Find an `App` from a `module:attribute` string, the way `flowmill worker` is told of it."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from ._app import App
from .errors import AppLoadError as AppLoadError


def _where(exc: BaseException) -> str:
    """`file:line` of the innermost frame of `exc`, to point at the culprit in one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename}:{exc.lineno})"
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _import(module_name: str, spec: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing module *named in the spec* is the caller's typo; a missing import
        # inside that module is the module's own error and is reported as such.
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise AppLoadError(
                f"cannot import {module_name!r} for app {spec!r}: no such module "
                f"(looked in the current directory {os.getcwd()} and on sys.path)"
            ) from exc
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}{_where(exc)}"
        ) from exc
    except Exception as exc:
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}{_where(exc)}"
        ) from exc


def load_app(spec: str, *, add_cwd: bool = True) -> App:
    """The `App` that `spec` ("package.module:attr", attr may be dotted) names.

    Like uvicorn, the current directory goes on `sys.path` first, so `flowmill worker
    jobs:app` finds `./jobs.py` without installing it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"bad app path {spec!r}: expected MODULE:ATTRIBUTE, e.g. jobs:app")
    if add_cwd:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
    obj = _import(module_name, spec)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(
                f"bad app path {spec!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    if not isinstance(obj, App):
        raise AppLoadError(
            f"bad app path {spec!r}: it is a {type(obj).__name__}, not a flowmill App"
        )
    return obj
