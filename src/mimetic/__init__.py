"""mimetic: fast Mamba-1 / Mamba-2 with mimetic initialization and recall benchmarks."""
from .init import MimeticConfig, mimetic_init_
from .models import MambaConfig, MambaLM
from .modules import MHA, Block, Mamba, Mamba2

__version__ = "0.1.0"

__all__ = ["MHA", "Block", "Mamba", "Mamba2", "MambaConfig", "MambaLM", "MimeticConfig",
           "mimetic_init_", "__version__"]
