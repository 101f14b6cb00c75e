"""User code named by an import path, `module:function` (a task's own verifier, an extra reward
term): imported with the working directory on the path, as `python -m` would, and its parameters
checked against what it will be called with, so that a wrong path or signature is a config error
naming the field, before anything starts. Standard library only: the config and the scoring
workers both use it."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Sequence


def working_dir_on_path() -> None:
    """The working directory on `sys.path` (a script's own folder is there, the folder it runs
    from is not): a user's module beside the config imports as it would with `python -m`. Ray
    puts the driver's working directory (or the job's `--working-dir`) on its workers' path."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def split_target(target: str) -> tuple[str, str]:
    module, sep, name = target.partition(":")
    if not sep or not module.strip() or not name.strip() or not all(p.isidentifier() for p in module.split(".")) \
            or not name.isidentifier():
        raise ValueError(f"{target!r} is not an import path of the form package.module:function")
    return module, name


def resolve(target: str) -> Callable[..., Any]:
    """The function `module:function` names; ValueError saying why when it cannot be had."""
    module_name, name = split_target(target)
    working_dir_on_path()
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure to import is the same config error
        raise ValueError(f"{target}: module {module_name!r} does not import ({type(error).__name__}: {error}); it "
                         "must be importable where the run starts and on every worker (run from its folder, or "
                         "ship it with `ray job submit --working-dir` / `py_modules`)") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{target}: {module_name} has no function {name!r}")
    return function


def check_signature(function: Callable[..., Any], target: str, params: Sequence[str]) -> None:
    """`function` can be called with len(params) positional arguments (named `params` in the message)."""
    try:
        inspect.signature(function).bind(*params)
    except TypeError:
        raise ValueError(f"{target} must take {len(params)} arguments ({', '.join(params)}); its signature is "
                         f"{name_and_signature(function)}") from None
    except ValueError:  # a builtin without a signature: accepted as it is
        pass


def name_and_signature(function: Callable[..., Any]) -> str:
    try:
        return f"{getattr(function, '__name__', 'function')}{inspect.signature(function)}"
    except (TypeError, ValueError):
        return repr(function)
