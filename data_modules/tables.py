"""Column names of the CSV tables data modules read: a near-miss is refused, never ignored."""
from __future__ import annotations

import difflib
from typing import Sequence

__all__ = ["check_column_names"]


def check_column_names(found: Sequence[str], known: Sequence[str], source: object, what: str, expected: str) -> None:
    """Refuse a column (or field) name that is not one of ``known`` but looks like one.

    A name equal to a known one but for letter case (``Split``) is refused always; a name close to
    a known one (``difflib`` ratio >= 0.8: ``splits``, ``evnt``) only when that known name is
    absent.  Either would otherwise be ignored in silence (an optional ``split`` column: the rows
    would be split at random) or reported only as missing.

    Raises:
        ValueError: ``"<source>: <what> 'Split' looks like 'split' but ..."``.
    """
    present = set(found)
    for name in found:
        if name in known:
            continue
        lower = name.lower()
        match = lower if lower in known else None
        if match is None:
            close = difflib.get_close_matches(lower, [k for k in known if k not in present], n=1, cutoff=0.8)
            match = close[0] if close else None
        if match is None:
            continue
        if match in present:
            extra = f"; the {what}s also hold {match!r}: keep one"
        elif match == "split":
            extra = " (an unknown name is ignored, and without 'split' the rows would be split at random)"
        else:
            extra = ""
        raise ValueError(
            f"{source}: {what} {name!r} looks like {match!r} but {what} names must match exactly (case-sensitive; expected "
            f"{expected}), found {list(found)}; rename {name!r} to {match!r}{extra}"
        )
