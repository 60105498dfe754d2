"""mimetic: fast Mamba-1 / Mamba-2 with mimetic initialization and recall benchmarks."""
__version__ = "0.1.0"
