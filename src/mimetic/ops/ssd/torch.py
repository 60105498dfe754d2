"""Placeholder until the fast chunked path lands: delegates to the sequential reference."""
from .reference import ssd_scan_ref as ssd_scan_torch  # noqa: F401
