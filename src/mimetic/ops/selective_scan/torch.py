"""Placeholder until the fast chunked path lands: delegates to the sequential reference."""
from .reference import selective_scan_ref as selective_scan_torch  # noqa: F401
