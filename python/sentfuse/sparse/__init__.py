"""Sparse (SPLADE) embeddings: sentence-transformers' SparseEncoder folders, vocabulary head fused in splade_pool."""

from .encoder import SparseEncoder
from .output import encode_sparse_file

__all__ = ["SparseEncoder", "encode_sparse_file"]
