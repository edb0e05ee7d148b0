"""sentfuse: fast sentence embeddings with fused pooling and normalization kernels for PyTorch."""

from importlib.metadata import PackageNotFoundError, version

from ._ops import cosine_topk, l2_normalize, masked_pool, masked_pool_varlen, threshold_pairs
from .encoder import Encoder
from .mining import community_detection, paraphrase_mining, paraphrase_mining_embeddings, similarity_matrix
from .search import search_topk, semantic_search
from .similarity import cos_sim, dot_score

try:
    __version__ = version("sentfuse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Encoder",
    "__version__",
    "community_detection",
    "cos_sim",
    "cosine_topk",
    "dot_score",
    "l2_normalize",
    "masked_pool",
    "masked_pool_varlen",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "search_topk",
    "semantic_search",
    "similarity_matrix",
    "threshold_pairs",
]
