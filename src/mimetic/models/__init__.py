"""Language models built from the layers: config, forward, cache, generation, checkpoints."""
from .cache import InferenceCache, KVState, SSMState
from .config import MambaConfig
from .lm import MambaLM, MixerModel

__all__ = ["InferenceCache", "KVState", "MambaConfig", "MambaLM", "MixerModel", "SSMState"]
