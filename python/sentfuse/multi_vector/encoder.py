"""MultiVectorEncoder: sentence-transformers' late-interaction (ColBERT-style) model on sentfuse's encode
pipeline and maxsim kernels."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._checks import check_sentences, device_or_default, parse_device, parse_dtype, positive_int
from ..encode.owner import PreparedCopies
from ..encode.pipeline import EncodeRequest, PackedTokens, Pipeline
from ..encode.run import RunOptions
from ..model.backbone import prepare_backbone
from ..model.modules import check_prompt_name, check_similarity_fn_name, choose_prompt, merge_prompts
from ..model.pretrained import load_pretrained
from ..model.resolve import resolve_model_path
from . import index, scoring
from .folder import SIMILARITY_FN_NAMES, load_multi_vector_folder
from .head import MultiVectorHead, check_expansion_token, expand_queries
from .save import save_multi_vector_folder

logger = logging.getLogger(__name__)

DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # encode_document's candidates, in ST's order
# Padded tokens per batch on CPU: twice the dense encode's default. Dense encode measured throughput flat from ~1k
# to ~4k tokens per batch; for the shipped SQuAD paragraphs (~150 tokens) on a loaded 2-core machine 4,096 ran
# encode_document 14-72% faster than 2,048 (median 16%) in 4 alternating rounds of 300 paragraphs: half the
# batches, so half the per-op thread wake-ups, for 2.5% padding instead of 1.4%.
CPU_BATCH_TOKENS = 4096


def keep_prefixes_whole(tokenizer: Any, prefixes: list[str]) -> None:
    """Register as special tokens the prefixes a PyLate save inserted as single tokens ([unused0], "[Q] ") that the
    tokenizer knows (the whole prefix or its first word) but splits as text: prepended as text, they then give
    the ids training saw. Unknown prefixes stay plain text; nothing grows the vocabulary."""
    from tokenizers import AddedToken

    known = set(tokenizer.get_vocab()) | set(getattr(tokenizer, "added_tokens_encoder", None) or {})
    whole = []
    for prefix in prefixes:
        for candidate in (prefix, prefix.split(None, 1)[0]):
            if candidate in known:
                if tokenizer.tokenize(candidate) != [candidate]:
                    whole.append(AddedToken(candidate, normalized=False, special=True))
                break
    if whole:
        tokenizer.add_special_tokens({"additional_special_tokens": whole})


class MultiVectorEncoder(PreparedCopies):
    """Token-level embeddings from a sentence-transformers MultiVectorEncoder folder (Transformer, token Dense,
    MultiVectorMask, Normalize), scored by MaxSim on sentfuse's kernels.

    Arguments follow sentence-transformers' MultiVectorEncoder; dtype picks the backbone's dtype.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, prompts: dict[str, str] | None = None,
                 default_prompt_name: str | None = None, similarity_fn_name: str | None = None,
                 truncate_dim: int | None = None, local_files_only: bool = True, cache_folder: str | None = None,
                 revision: str | None = None) -> None:
        target = device_or_default(device)
        if similarity_fn_name is not None:
            check_similarity_fn_name(similarity_fn_name, SIMILARITY_FN_NAMES)
        self.folder = load_multi_vector_folder(
            resolve_model_path(model_name_or_path, local_files_only, cache_folder, revision))
        self.model_path = self.folder.path
        self.prompts = merge_prompts(prompts, self.folder.prompts)
        self.default_prompt_name = default_prompt_name or self.folder.default_prompt_name
        if self.default_prompt_name is not None:
            check_prompt_name(self.default_prompt_name, self.prompts, "default_prompt_name")
        self._similarity_fn_name = similarity_fn_name or self.folder.similarity_fn_name
        self.truncate_dim = positive_int(truncate_dim, "truncate_dim") or self.folder.truncate_dim

        tokenizer, model = load_pretrained(self.folder.transformer.path, parse_dtype(dtype))
        keep_prefixes_whole(tokenizer, self.folder.prefix_tokens)
        limit = self.folder.transformer.max_seq_length or tokenizer.model_max_length
        positions = getattr(model.config, "max_position_embeddings", -1)
        if isinstance(positions, int) and positions > 0:
            limit = min(limit, positions)
        self.max_seq_length = limit
        self._tokenizer = tokenizer
        self._model = prepare_backbone(model.eval().to(target))
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self._head = MultiVectorHead(self.folder.head, model.config.hidden_size, target, model.dtype)
        self._head.resolve(tokenizer)
        if self.folder.query_expansion is not None:
            check_expansion_token(tokenizer, self.folder.query_expansion, self.model_path)
        if self.folder.query_expansion is not None and not self._head.masks:
            logger.warning("%s expands queries but has no MultiVectorMask module: the expansion tokens are not "
                           "scored (unless attended to), as in sentence-transformers", self.model_path)
        self._pipelines: dict[int, Pipeline] = {}

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def similarity_fn_name(self) -> str:
        return self._similarity_fn_name or "maxsim"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str) -> None:
        self._similarity_fn_name = check_similarity_fn_name(value, SIMILARITY_FN_NAMES)

    def get_embedding_dimension(self) -> int:
        return self._head.dim if self.truncate_dim is None else min(self.truncate_dim, self._head.dim)

    def _forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in features.items() if k in self._forward_args}
        return self._model(**inputs, return_dict=True).last_hidden_state

    def _pipeline(self, max_length: int) -> Pipeline:
        """One pipeline per token limit (a pipeline reads the limit at construction)."""
        if max_length not in self._pipelines:
            self._pipelines[max_length] = Pipeline(self._tokenizer, self._forward, None, self.device,
                                                   self._model.dtype, RunOptions.from_env(), max_length=max_length)
        return self._pipelines[max_length]

    def _rebuilt_on_copy(self) -> dict[str, Any]:
        return {"_pipelines": {}}

    def _task_length(self, task: str | None) -> int:
        length = {"query": self.folder.query_length, "document": self.folder.document_length}.get(task)
        return min(length, self.max_seq_length) if length else self.max_seq_length

    def _token_vectors(self, texts: list[str], task: str | None, batch_size: int, progress: bool,
                       finish: Callable[[torch.Tensor], torch.Tensor]) -> PackedTokens:
        """The head output of the tokens each text's task scores (skiplist applied), packed; finish runs once on
        all of them. Only those tokens reach the head: padding and skipped tokens are dropped right after the
        backbone."""
        if not texts:  # no batch runs: the head's width still shapes the empty result
            empty = torch.zeros(0, dtype=torch.long)
            return PackedTokens(finish(torch.zeros(0, self._head.dim, device=self.device)), empty, empty)
        expansion = self.folder.query_expansion if task == "query" else None
        if expansion is not None:
            return self._expanded_vectors(texts, expansion, batch_size, finish)
        select = (lambda ids: self._head.keep(ids, task)) if self._head.needs_ids(task) else None
        packed = self._pipeline(self._task_length(task)).tokens(EncodeRequest(
            texts=texts, skip_tokens=0, batch_size=batch_size,
            max_batch_tokens=CPU_BATCH_TOKENS if self.device.type == "cpu" else None, token_embeddings=True,
            dim=0, normalize=False, out_dtype=None, progress=progress), select, self._head)
        packed.rows = finish(packed.rows)
        return packed

    def _expanded_vectors(self, texts: list[str], expansion: Any, batch_size: int,
                          finish: Callable[[torch.Tensor], torch.Tensor]) -> PackedTokens:
        rows, counts = [], []
        for start in range(0, len(texts), batch_size):
            features = expand_queries(self._tokenizer, texts[start : start + batch_size], expansion,
                                      self._task_length("query"))
            scored = features.pop("scored")
            # Without a MultiVectorMask module nothing marks the expansion tokens as scored: only the attended
            # ones give vectors, as in sentence-transformers (which warns at load, as __init__ does).
            keep = (scored if self._head.masks else features["attention_mask"] != 0) & self._head.keep(
                features["input_ids"], "query")
            hidden = self._forward({k: v.to(self.device) for k, v in features.items()})
            rows.append(self._head(hidden[keep.to(hidden.device)]))
            counts.append(keep.sum(1))
        return PackedTokens(finish(torch.cat(rows)), torch.arange(len(texts)), torch.cat(counts))

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        return choose_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name)

    @torch.inference_mode()
    def encode(self, inputs: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
               batch_size: int = 32, show_progress_bar: bool | None = None,
               output_value: str | None = "token_embeddings", convert_to_numpy: bool = False,
               device: str | torch.device | None = None, normalize_embeddings: bool = False,
               token_pooling: Any = None, truncate_dim: int | None = None, pool: Any = None,
               chunk_size: int | None = None, task: str | None = None, packed: bool = False,
               **kwargs: Any) -> Any:
        """Per-text token embeddings [n_i, dim]: a list of tensors (numpy arrays with convert_to_numpy), one
        tensor for a single str. packed=True (sentfuse) returns (tokens [sum n_i, dim], offsets [N + 1] int64)
        instead, the layout sentfuse's maxsim ops read. task "query" / "document" picks the token limit,
        query expansion and skiplist as sentence-transformers does."""
        if "convert_to_tensor" in kwargs:
            raise ValueError("MultiVectorEncoder.encode() has no `convert_to_tensor`: multi-vector embeddings are "
                             "variable-length; it returns a list of tensors (or packed=True for one packed tensor)")
        if kwargs:
            raise ValueError(f"MultiVectorEncoder.encode() got keyword arguments it does not use: {list(kwargs)}")
        if output_value != "token_embeddings":
            raise ValueError(f'sentfuse\'s MultiVectorEncoder supports output_value="token_embeddings" only, got '
                             f"{output_value!r}")
        for name, value in (("token_pooling", token_pooling), ("pool", pool)):
            if value is not None:
                raise ValueError(f"sentfuse's MultiVectorEncoder does not support {name}")
        if positive_int(batch_size, "batch_size") is None:
            batch_size = 32
        positive_int(chunk_size, "chunk_size")
        target = parse_device(device)
        if target is not None and target != self.device:
            self._model.to(target)
            self._head = MultiVectorHead(self.folder.head, self._head_hidden(), target, self._model.dtype)
            self._head.resolve(self._tokenizer)
            self._pipelines.clear()
        single, texts = check_sentences(inputs)
        resolved = self._resolve_prompt(prompt, prompt_name)
        texts = [resolved + t for t in texts] if resolved else texts
        progress = bool(show_progress_bar) if show_progress_bar is not None else logger.isEnabledFor(logging.INFO)
        dim = positive_int(truncate_dim, "truncate_dim") or self.truncate_dim

        def finish(x: torch.Tensor) -> torch.Tensor:  # token by token, so once on all texts' tokens
            if normalize_embeddings:
                x = torch.nn.functional.normalize(x, p=2.0, dim=-1)
            if dim is not None:
                x = torch.nn.functional.normalize(x[..., :dim], p=2.0, dim=-1)
            return x.cpu() if convert_to_numpy else x

        return self._finish(self._token_vectors(texts, task, batch_size, progress, finish), single,
                            convert_to_numpy, packed)

    def _head_hidden(self) -> int:
        return self._model.config.hidden_size

    @staticmethod
    def _finish(tokens: PackedTokens, single: bool, convert_to_numpy: bool, packed: bool) -> Any:
        if convert_to_numpy and tokens.rows.dtype == torch.bfloat16:
            tokens.rows = tokens.rows.float()  # numpy has no bfloat16
        if packed:
            flat, offsets = tokens.packed()
            return (flat.numpy(), offsets.numpy()) if convert_to_numpy else (flat, offsets)
        texts = tokens.per_text()
        if convert_to_numpy:
            texts = [t.numpy() for t in texts]
        return texts[0] if single else texts

    def encode_query(self, inputs: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
                     **kwargs: Any) -> Any:
        """encode with task="query" and the "query" prompt unless another is given."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, task="query", **kwargs)

    def _document_prompt_name(self, prompt_name: str | None, prompt: str | None) -> str | None:
        if prompt_name is None and prompt is None:
            return next((n for n in DOCUMENT_PROMPT_NAMES if n in self.prompts), None)
        return prompt_name

    def encode_document(self, inputs: str | Sequence[str], prompt_name: str | None = None,
                        prompt: str | None = None, **kwargs: Any) -> Any:
        """encode with task="document" and the first of the "document", "passage", "corpus" prompts it has."""
        return self.encode(inputs, prompt_name=self._document_prompt_name(prompt_name, prompt), prompt=prompt,
                           task="document", **kwargs)

    def write_index(self, documents: Sequence[str], path: str | os.PathLike, *, prompt_name: str | None = None,
                    prompt: str | None = None, batch_size: int = 32, show_progress_bar: bool | None = None,
                    chunk_documents: int = index.DEFAULT_CHUNK_DOCUMENTS,
                    source: dict[str, Any] | None = None) -> index.MultiVectorIndex:
        """Encode documents as encode_document does into a multi-vector index folder at path (float16 token vectors
        on disk, chunk by chunk, written atomically; see sentfuse.multi_vector.index), for search."""
        _, documents = check_sentences(documents)
        text = self._resolve_prompt(prompt, self._document_prompt_name(prompt_name, prompt)) or ""
        progress = bool(show_progress_bar) if show_progress_bar is not None else logger.isEnabledFor(logging.INFO)
        return index.write_index(path, self, documents, prompt=text, batch_size=batch_size,
                                 chunk_documents=chunk_documents, show_progress_bar=progress, source=source)

    def search(self, queries: str | Sequence[str], corpus_index: Any, top_k: int = 10, *,
               prompt_name: str | None = None, prompt: str | None = None, batch_size: int = 32,
               chunk_tokens: int = index.DEFAULT_CHUNK_TOKENS) -> list:
        """Encode queries as encode_query does and return their best top_k documents of corpus_index (a
        MultiVectorIndex or its folder, built by this model) as semantic_search does: per query a list of
        {"corpus_id", "score"}, best first (a single query string: its list). Scores follow similarity_fn_name."""
        if not isinstance(corpus_index, index.MultiVectorIndex):
            corpus_index = index.MultiVectorIndex(corpus_index)
        corpus_index.check_model(self)
        encoded = self.encode_query([queries] if isinstance(queries, str) else list(queries),
                                    prompt_name=prompt_name, prompt=prompt, batch_size=batch_size)
        scores, ids = corpus_index.search(encoded, positive_int(top_k, "top_k"), chunk_tokens=chunk_tokens,
                                          score="meanmaxsim" if self.similarity_fn_name == "meanmaxsim" else "maxsim")
        hits = [[{"corpus_id": i, "score": s} for s, i in zip(row_s, row_i)]
                for row_s, row_i in zip(scores.tolist(), ids.tolist())]
        return hits[0] if isinstance(queries, str) else hits

    def similarity(self, embeddings1: Any, embeddings2: Any, **kwargs: Any) -> torch.Tensor:
        """[len(embeddings1), len(embeddings2)] scores by the model's similarity_fn_name (maxsim / meanmaxsim)."""
        fn = scoring.mean_maxsim if self.similarity_fn_name == "meanmaxsim" else scoring.maxsim
        return fn(embeddings1, embeddings2, **kwargs)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any, **kwargs: Any) -> torch.Tensor:
        """[len(embeddings1)] scores of the pairs (embeddings1[i], embeddings2[i])."""
        fn = scoring.mean_maxsim_pairwise if self.similarity_fn_name == "meanmaxsim" else scoring.maxsim_pairwise
        return fn(embeddings1, embeddings2, **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Write a folder sentence-transformers' MultiVectorEncoder and sentfuse both load."""
        save_multi_vector_folder(path, self.folder.path, {
            "prompts": {k: v for k, v in self.prompts.items() if v},
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self._similarity_fn_name,
            **({"truncate_dim": self.truncate_dim} if self.truncate_dim is not None else {}),
        })

    save_pretrained = save

    def __repr__(self) -> str:
        return f"MultiVectorEncoder({str(self.model_path)!r}, device={self.device}, dim={self.get_embedding_dimension()})"
