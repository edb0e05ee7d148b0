"""Texts to embeddings: the Encoder, its batch planner, the multi-process pool and quantization."""

from .encoder import Encoder
from .pool import EncoderPool, encode_multi_process, start_multi_process_pool, stop_multi_process_pool
from .quantize import quantize_embeddings

__all__ = [
    "Encoder",
    "EncoderPool",
    "encode_multi_process",
    "quantize_embeddings",
    "start_multi_process_pool",
    "stop_multi_process_pool",
]
