"""The toolkit's one progress bar: tqdm on stderr (so that --json output on stdout stays clean)."""

from __future__ import annotations

import sys


def progress_bar(total: float | None, desc: str, unit: str = "it", enabled: bool = True, initial: float = 0,
                 leave: bool = False):
    """A bar for long work; `leave` keeps it on screen when done (stages of a long build)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                leave=leave, dynamic_ncols=True, mininterval=1.0)
