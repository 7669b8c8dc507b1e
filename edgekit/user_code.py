"""A function of the user's own code named `module:function` on the command line or in edgekit.yaml
(--arch, --calib/--eval module:function, --metric): imported from the working directory, with one
sentence for each way that fails. Trust comes from the user naming it, never from an artifact."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from edgekit.errors import EdgekitError, first_line


def load_function(spec: str, flag: str) -> Callable:
    """The callable SPEC (`package.module:function`) names; FLAG is how sentences name it."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise EdgekitError(f"{flag} {spec!r} must look like package.module:function.")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise EdgekitError(f"{flag} {spec}: cannot import it ({first_line(e)}).") from None
    except Exception as e:  # the module's own code failed as it was imported
        raise EdgekitError(
            f"{flag} {spec}: importing {mod_name} raised {type(e).__name__} ({first_line(e)})."
        ) from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise EdgekitError(f"{flag} {spec}: cannot import it ({mod_name} has no {fn_name!r}).")
    if not callable(fn):
        raise EdgekitError(f"{flag} {spec} is not a function (it is of type {type(fn).__name__}).")
    return fn
