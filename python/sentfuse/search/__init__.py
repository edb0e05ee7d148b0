"""Comparing embeddings: similarity functions and matrices, exact top-k search, pairs above a threshold,
paraphrase mining and community detection."""

from .communities import community_detection
from .matrix import similarity_matrix
from .paraphrase import paraphrase_mining, paraphrase_mining_embeddings
from .similarity import (
    cos_sim,
    dot_score,
    euclidean_sim,
    manhattan_sim,
    pairwise_cos_sim,
    pairwise_dot_score,
    pairwise_euclidean_sim,
    pairwise_manhattan_sim,
    pytorch_cos_sim,
)
from .topk import search_topk, semantic_search

__all__ = [
    "community_detection",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "pairwise_euclidean_sim",
    "pairwise_manhattan_sim",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "pytorch_cos_sim",
    "search_topk",
    "semantic_search",
    "similarity_matrix",
]
