"""Comparing embeddings: similarity functions, exact top-k search, threshold pairs and mining."""

from .mining import community_detection, paraphrase_mining, paraphrase_mining_embeddings, similarity_matrix
from .similarity import cos_sim, dot_score
from .topk import search_topk, semantic_search

__all__ = [
    "community_detection",
    "cos_sim",
    "dot_score",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "search_topk",
    "semantic_search",
    "similarity_matrix",
]
