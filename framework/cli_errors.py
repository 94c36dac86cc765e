"""One line per error for MedCL's console scripts: :func:`one_line_errors` and :func:`error_line`."""
from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Iterator, List

import pytorch_lightning as pl

from framework.cli_checks import parameters

__all__ = ["error_line", "one_line_errors"]


#: packages that re-raise a user's error inside their own (jsonargparse: "Does not validate against any of the Union subtypes")
_WRAPPERS = ("jsonargparse", "pytorch_lightning", "lightning_fabric", "lightning")


def _raised_by_wrapper(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    parts = Path(tb.tb_frame.f_code.co_filename).parts
    return any(pkg in parts for pkg in _WRAPPERS)


def error_line(err: BaseException) -> str:
    """One line for an error: ``"<Type>: <message>"`` of the outermost error raised by MedCL's (or
    the user's) code, which names the file or field; not of its deepest cause (a network error
    under MedCL's download instructions), and not of a wrapper that jsonargparse or Lightning
    raised around it.

    A message that holds a formatted traceback (an error re-raised from a DataLoader worker) is
    reduced to its last line, the original error; other multi-line messages are joined.
    """
    outer = err
    while err.__cause__ is not None and (_raised_by_wrapper(err) or not str(err).strip()):
        err = err.__cause__
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if any(line.startswith(("Traceback (most recent call last)", "Original Traceback")) for line in lines):
        return lines[-1]
    line = f"{type(err).__name__}: {' '.join(lines)}" if lines else type(err).__name__
    return _field_of(outer, line) + _option_hint(outer, line)


def _field_of(outer: BaseException, line: str) -> str:
    """Name the config field of a jsonargparse type error that names none
    (``"Expected a <class 'str'>. Got value: 1"``), from the keys and class of its wrappers."""
    if "Parser key" in line or not re.search(r"Expected a .*Got value", line):
        return line
    text = _chain_text(outer)
    keys = list(dict.fromkeys(re.findall(r'Parser key "([\w.]+)"', text)))
    classes = re.findall(r"class_path '([\w.]+)'", text)
    if not keys:
        return line
    outer_keys = sorted(keys, key=lambda k: not k.startswith(("trainer", "model", "data")))  # "trainer.callbacks", then "filename"
    field = outer_keys[0] + (f" ({classes[0]})" if classes else "") + "".join(f".init_args.{k}" for k in outer_keys[1:])
    hint = ""
    found = re.search(r"Expected a <class 'str'>\. Got value: (-?[\d.]+)$", line)
    if found:
        hint = f"; YAML reads an unquoted number (such as 01) as the number {found.group(1)}: put the value in quotes"
    kind, _, message = line.partition(": ")
    return f"{kind}: field {field}: {message}{hint}"


def _chain_text(err: BaseException) -> str:
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def _option_hint(outer: BaseException, line: str) -> str:
    """``"; did you mean 'lr'?"`` for a misspelt config key (jsonargparse names the key, not the closest one)."""
    match = re.search(r"(?:option|arguments:) '?(?:--)?([\w.]+)'?", line, flags=re.IGNORECASE)
    if not match:
        return ""
    key = match.group(1)
    section, _, name = key.rpartition(".")
    candidates: List[str] = []
    if section.split(".")[0] == "trainer" or key.startswith("trainer."):
        candidates += parameters(pl.Trainer)
    for class_path in re.findall(r"class_path '([\w.]+)'", _chain_text(outer)):
        module_name, _, attr = class_path.rpartition(".")
        try:
            candidates += parameters(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError):  # pragma: no cover - reported by check_class_paths
            continue
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean '{close[0]}'? (a misspelt key is an error, never a silent default)" if close else ""


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run a console script's body: any error becomes one line naming the file or field, with MedCL's
    own message (``MEDCL_TRACEBACK=1`` shows the traceback); the current folder is importable, as
    with ``python -m``, so a package next to the user's configs can be named by ``class_path``."""
    if os.getcwd() not in sys.path:  # last, so a file in the current folder cannot shadow an installed module
        sys.path.append(os.getcwd())
    try:
        yield
    except Exception as err:
        if os.environ.get("MEDCL_TRACEBACK"):
            raise
        print(f"{prog}: error: {error_line(err)}\n(set MEDCL_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)
