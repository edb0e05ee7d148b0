"""Late interaction (ColBERT-style) models: MultiVectorEncoder and the MaxSim scoring functions."""

from .encoder import MultiVectorEncoder
from .scoring import maxsim, maxsim_pairwise, mean_maxsim, mean_maxsim_pairwise

__all__ = ["MultiVectorEncoder", "maxsim", "maxsim_pairwise", "mean_maxsim", "mean_maxsim_pairwise"]
