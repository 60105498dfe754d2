"""Progress bars: shown when asked for and the output is a terminal, quiet otherwise."""
from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable=None, *, enabled: bool, **kwargs) -> tqdm:
    """A tqdm bar over ``iterable`` (or of ``total=``), drawn only when ``enabled`` and stderr
    is a terminal (tqdm's ``disable=None``): a log file or a pipe gets no bar lines."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
