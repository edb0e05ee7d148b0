"""sentfuse: fast sentence embeddings with fused pooling and normalization kernels for PyTorch."""

from importlib.metadata import PackageNotFoundError, version

from . import util
from ._ops import cosine_topk, l2_normalize, masked_pool, masked_pool_varlen, threshold_pairs
from ._ops import maxsim_candidates, maxsim_topk
from .encode import Encoder, EncoderPool, encode_multi_process, start_multi_process_pool, stop_multi_process_pool
from .sparse import SparseEncoder
from .cross_encoder import CrossEncoder
from . import evaluation, losses
from .train import BatchSamplers, InputExample, MultiDatasetBatchSamplers
from .multi_vector import MultiVectorEncoder
from .search import (
    community_detection,
    cos_sim,
    dot_score,
    paraphrase_mining,
    paraphrase_mining_embeddings,
    search_topk,
    semantic_search,
    similarity_matrix,
)
from .encode.quantize import quantize_embeddings
from .search.hard_negatives import mine_hard_negatives
from .util import LoggingHandler
from .search.similarity import SimilarityFunction

# sentence-transformers' name for the Encoder, so that scripts switch by their import line alone.
SentenceTransformer = Encoder

try:
    __version__ = version("sentfuse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

def __getattr__(name: str):
    """The trainer and its arguments import transformers.Trainer (seconds): loaded on first use."""
    if name in ("SentenceTransformerTrainer", "SentenceTransformerTrainingArguments"):
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module 'sentfuse' has no attribute {name!r}")


__all__ = [
    "CrossEncoder",
    "Encoder",
    "EncoderPool",
    "LoggingHandler",
    "MultiVectorEncoder",
    "SentenceTransformer",
    "SimilarityFunction",
    "SparseEncoder",
    "__version__",
    "community_detection",
    "cos_sim",
    "cosine_topk",
    "dot_score",
    "encode_multi_process",
    "l2_normalize",
    "masked_pool",
    "masked_pool_varlen",
    "maxsim_candidates",
    "maxsim_topk",
    "mine_hard_negatives",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "quantize_embeddings",
    "search_topk",
    "semantic_search",
    "similarity_matrix",
    "start_multi_process_pool",
    "stop_multi_process_pool",
    "threshold_pairs",
    "util",
    "BatchSamplers",
    "MultiDatasetBatchSamplers",
    "InputExample",
    "SentenceTransformerTrainer",
    "SentenceTransformerTrainingArguments",
    "evaluation",
    "losses",
]
