"""mine_hard_negatives: (anchor, positive) pairs -> triplets or tuples with hard negatives, as
sentence-transformers' util.mine_hard_negatives builds them (same arguments, filters, sampling and output
formats), with the candidates found by sentfuse's exact top-k kernel instead of a full score matrix per chunk.

For each distinct anchor the corpus (the positives, plus `corpus`) is searched for its range_max best
candidates beyond what the filters may drop (its positives, the anchor's own text); candidates are then
optionally rescored by a cross-encoder, filtered (margins to the anchor's weakest positive, score bounds),
and num_negatives of the best range_max (after skipping range_min) kept, the top ones or a random sample.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path
from .similarity import KERNEL_SCORE_FUNCTIONS
from .topk import search_topk

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
NO_SCORE = -float("inf")


def _texts(column: Any) -> list:
    """A dataset column, array or list as a list. datasets' Column object iterates row by row (0.2 s per
    5,000 rows); its slice converts through Arrow at once."""
    if hasattr(column, "tolist"):
        return column.tolist()
    return list(column[:]) if hasattr(column, "__getitem__") else list(column)


def _cached(folder: str | None, kind: str, key: tuple, compute) -> np.ndarray:
    """compute(), or its result saved earlier under folder for the same key (written atomically)."""
    if not folder:
        return compute()
    digest = hashlib.sha256(repr(key).encode(), usedforsecurity=False).hexdigest()
    path = Path(folder) / f"{kind}_embeddings_{digest}.npy"
    if path.exists():
        return np.load(path)
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as f:
            np.save(f, values)
    return values


def _candidates(model: Any, queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[queries, width] best corpus scores and indices per query (k found, padded with -inf / -1)."""
    function = KERNEL_SCORE_FUNCTIONS.get(getattr(model, "similarity_fn_name", None))
    if function is not None:
        scores, indices = search_topk(queries, corpus, k, score_function=function, query_chunk_size=chunk)
    else:  # any other similarity: the model's own function over a score matrix per chunk
        parts = [model.similarity(queries[i:i + chunk], corpus).topk(k, dim=1) for i in range(0, len(queries), chunk)]
        scores, indices = torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])
    scores, indices = scores.float().cpu(), indices.long().cpu()
    missing = width - scores.shape[1]
    if missing > 0:
        scores = torch.cat([scores, scores.new_full((len(scores), missing), NO_SCORE)], dim=1)
        indices = torch.cat([indices, indices.new_full((len(indices), missing), -1)], dim=1)
    return scores, indices


def _drop(scores: torch.Tensor, mask: torch.Tensor, counters: dict, reason: str, remaining: int) -> int:
    """Set the masked candidates' scores to -inf, count them under reason; the candidates left."""
    scores[mask] = NO_SCORE
    skipped = int(mask.sum())
    if skipped:
        counters[reason] = (skipped, skipped / remaining)
    return remaining - skipped


def mine_hard_negatives(dataset: Any, model: Any, anchor_column_name: str | None = None,
                        positive_column_name: str | None = None, corpus: list[str] | None = None,
                        cross_encoder: Any = None, range_min: int = 0, range_max: int | None = None,
                        max_score: float | None = None, min_score: float | None = None,
                        absolute_margin: float | None = None, relative_margin: float | None = None,
                        num_negatives: int = 3, sampling_strategy: str = "top", query_prompt_name: str | None = None,
                        query_prompt: str | None = None, corpus_prompt_name: str | None = None,
                        corpus_prompt: str | None = None, include_positives: bool = False,
                        output_format: str = "triplet", output_scores: bool = False, batch_size: int = 32,
                        faiss_batch_size: int = 16384, use_faiss: bool = False,
                        use_multi_process: list[str] | bool = False, verbose: bool = True,
                        cache_folder: str | None = None, as_triplets: bool | None = None,
                        margin: float | None = None) -> Any:
    """A datasets.Dataset of the pairs with hard negatives, in sentence-transformers' output formats:
    "triplet" (anchor, positive, negative; one row per kept negative), "n-tuple" (anchor, positive,
    negative_1..n; rows that found all n), "labeled-pair" (anchor, text, label 1/0 or score) and "labeled-list"
    (anchor, [positive, negatives...], labels or scores). faiss_batch_size is the number of queries scored per
    kernel call; use_faiss is accepted for compatibility: the exact top-k kernel serves both settings."""
    from datasets import Dataset

    if len(dataset) == 0:
        raise ValueError("mine_hard_negatives: the dataset is empty")
    if faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive int, got {faiss_batch_size}")
    columns = dataset.column_names
    if not anchor_column_name or anchor_column_name not in columns:
        anchor_column_name = columns[0]
    if not positive_column_name or positive_column_name not in columns:
        if len(columns) < 2:
            raise ValueError("mine_hard_negatives: the dataset needs an anchor and a positive column")
        positive_column_name = columns[1]
    if as_triplets is not None:  # the older switch
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning("as_triplets is deprecated; use output_format (set to %r)", output_format)
    if margin is not None:  # the older name
        absolute_margin = margin
        logger.warning("margin is deprecated; use absolute_margin (set to %r)", margin)
    if output_format == "n-tuple-scores":
        output_format, output_scores = "n-tuple", True
    if include_positives:
        if output_format != "n-tuple":
            logger.warning("include_positives=True keeps the ranking order only in the 'n-tuple' format; using it")
        output_format = "n-tuple"
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(map(repr, OUTPUT_FORMATS))}, got {output_format!r}")
    if sampling_strategy not in ("top", "random"):
        raise ValueError(f"sampling_strategy must be 'top' or 'random', got {sampling_strategy!r}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")

    all_queries, all_positives = _texts(dataset[anchor_column_name]), _texts(dataset[positive_column_name])
    positives_per_query = list(Counter(all_queries).values())
    max_positives = max(positives_per_query)
    if range_max is None:
        wide = (absolute_margin is not None or relative_margin is not None or max_score is not None
                or (cross_encoder is not None and min_score is not None))
        range_max = range_min + num_negatives * (10 if wide else 1) + max_positives
        if verbose:
            print(f"Setting range_max to {range_max} based on the provided parameters.")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got {range_min}")
    if range_min >= range_max:
        raise ValueError(f"range_min ({range_min}) must be smaller than range_max ({range_max})")
    if num_negatives > range_max - range_min:
        raise ValueError(f"cannot mine {num_negatives} negatives per query from the {range_max - range_min} "
                         f"candidates between range_min={range_min} and range_max={range_max}")

    corpus = list(dict.fromkeys((all_positives if corpus is None else _texts(corpus)) + all_positives))
    corpus_row = {text: i for i, text in enumerate(corpus)}
    queries = list(dict.fromkeys(all_queries))
    query_row = {text: i for i, text in enumerate(queries)}
    own_text = [corpus_row.get(q, -1) for q in queries]  # a query found in the corpus is not its own negative
    if verbose and len(queries) != len(all_queries):
        print(f"Found {len(queries)} unique queries out of {len(all_queries)} total queries.")
    if verbose and max_positives > 1:
        print(f"Found an average of {np.mean(positives_per_query):.3f} positives per query.")

    base = getattr(getattr(model, "model_card_data", None), "base_model", None) or ""
    pool = None
    if use_multi_process:
        pool = model.start_multi_process_pool(None if isinstance(use_multi_process, bool) else use_multi_process)
    try:
        encode = dict(pool=pool, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                      show_progress_bar=verbose)
        corpus_vectors = _cached(cache_folder, "corpus", (base, corpus_prompt, corpus_prompt_name, corpus),
                                 lambda: model.encode_document(corpus, prompt_name=corpus_prompt_name,
                                                               prompt=corpus_prompt, **encode))
        query_vectors = _cached(cache_folder, "query", (base, query_prompt, query_prompt_name, queries),
                                lambda: model.encode_query(queries, prompt_name=query_prompt_name, prompt=query_prompt,
                                                           **encode))
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)

    width = range_max + max_positives + 1  # room for the positives and the query's own text, dropped below
    scores, indices = _candidates(model, query_vectors, corpus_vectors, min(width, len(corpus)), faiss_batch_size,
                                  width)

    positive_rows: list[list[int]] = [[] for _ in queries]
    for query, positive in zip(all_queries, all_positives):
        q = query_row[query]
        if corpus_row[positive] not in positive_rows[q]:
            positive_rows[q].append(corpus_row[positive])
        if include_positives and query == positive:
            own_text[q] = -1
    counts = [len(rows) for rows in positive_rows]
    pair_query = [q for q, n in enumerate(counts) for _ in range(n)]  # one entry per distinct (query, positive)
    pair_positive = [p for rows in positive_rows for p in rows]
    pair_queries = [queries[q] for q in pair_query]
    pair_positives = [corpus[p] for p in pair_positive]
    positive_scores = model.similarity_pairwise(query_vectors[pair_query], corpus_vectors[pair_positive]).float().cpu()

    if cross_encoder is not None:
        pool = (cross_encoder.start_multi_process_pool(None if isinstance(use_multi_process, bool) else use_multi_process)
                if use_multi_process else None)
        try:
            predict = dict(batch_size=batch_size, convert_to_tensor=True, pool=pool)
            for q, row in enumerate(indices.tolist()):
                texts = [corpus[i] for i in row]  # -1 (padding) reads the last text; its score is dropped below
                scores[q] = cross_encoder.predict(list(zip([queries[q]] * len(texts), texts)), **predict).float().cpu()
            positive_scores = cross_encoder.predict(list(zip(pair_queries, pair_positives)), **predict).float().cpu()
        finally:
            if pool is not None:
                cross_encoder.stop_multi_process_pool(pool)

    scores[indices == -1] = NO_SCORE
    scores[indices == torch.tensor(own_text)[:, None]] = NO_SCORE
    if not include_positives:
        stride = len(corpus) + 1
        known = torch.tensor(pair_query) * stride + torch.tensor(pair_positive)
        candidate = torch.arange(len(queries))[:, None] * stride + indices
        scores[torch.isin(candidate, known)] = NO_SCORE

    counters: dict[str, tuple[int, float]] = {}
    remaining = scores.numel()
    if absolute_margin is not None or relative_margin is not None:
        # Each query's weakest positive bounds its negatives.
        weakest = torch.stack([part.min() for part in positive_scores.split(counts)])[:, None]
        if absolute_margin is not None:
            remaining = _drop(scores, scores + absolute_margin > weakest, counters, "absolute_margin", remaining)
        if relative_margin is not None:
            remaining = _drop(scores, scores > weakest - weakest.abs() * relative_margin, counters,
                              "relative_margin", remaining)
    if max_score is not None:
        _drop(scores, scores > max_score, counters, "max_score", remaining)
    if min_score is not None:
        _drop(scores, (scores < min_score) & (scores != NO_SCORE), counters, "min_score", remaining)

    negative_scores, picked = torch.topk(scores, k=range_max, dim=1)
    rows = torch.arange(len(queries))[:, None]
    indices = indices[rows, picked][:, range_min:]
    negative_scores = negative_scores[:, range_min:]
    if sampling_strategy == "top":
        indices, negative_scores = indices[:, :num_negatives], negative_scores[:, :num_negatives]
    else:
        # Python's random, one sample per query in order, so random.seed repeats a run.
        options = (indices.shape[1] - negative_scores.isinf().sum(1)).clamp(min=num_negatives)
        sampled = torch.tensor([random.sample(range(n), k=num_negatives) for n in options.tolist()])
        indices, negative_scores = indices[rows, sampled], negative_scores[rows, sampled]
        negative_scores, order = negative_scores.sort(dim=1, descending=True)
        indices = indices[rows, order]
    if verbose:
        print("Negative candidates mined, preparing dataset...")

    per_pair = torch.tensor(counts)
    pair_indices = indices.repeat_interleave(per_pair, dim=0)  # [pairs, negatives]
    pair_scores = negative_scores.repeat_interleave(per_pair, dim=0)
    kept = pair_scores != NO_SCORE
    anchor_name, positive_name = anchor_column_name, positive_column_name
    if output_format == "triplet":
        row_of, column_of = kept.nonzero(as_tuple=True)
        data: dict[str, list] = {anchor_name: [pair_queries[r] for r in row_of.tolist()],
                                 positive_name: [pair_positives[r] for r in row_of.tolist()],
                                 "negative": [corpus[i] for i in pair_indices[kept].tolist()]}
        if output_scores:
            data["scores"] = [[float(positive_scores[r]), float(s)]
                              for r, s in zip(row_of.tolist(), pair_scores[kept].tolist())]
        possible = kept.numel()
    elif output_format == "labeled-pair":
        data = {anchor_name: [], positive_name: [], ("score" if output_scores else "label"): []}
        labels = data["score" if output_scores else "label"]
        pair = 0
        for q, query in enumerate(queries):
            for p in positive_rows[q]:
                data[anchor_name].append(query)
                data[positive_name].append(corpus[p])
                labels.append(float(positive_scores[pair]) if output_scores else 1)
                pair += 1
            for i, s in zip(indices[q].tolist(), negative_scores[q].tolist()):
                if s != NO_SCORE:
                    data[anchor_name].append(query)
                    data[positive_name].append(corpus[i])
                    labels.append(s if output_scores else 0)
        possible = len(queries) * num_negatives + len(dataset)
    elif output_format == "n-tuple":
        full = kept.all(dim=1)
        rows_kept = full.nonzero(as_tuple=True)[0].tolist()
        data = {anchor_name: [pair_queries[r] for r in rows_kept], positive_name: [pair_positives[r] for r in rows_kept]}
        for n, column in enumerate(pair_indices[full].T.tolist(), start=1):
            data[f"negative_{n}"] = [corpus[i] for i in column]
        if output_scores:
            data["scores"] = torch.cat([positive_scores[full][:, None], pair_scores[full]], dim=1).tolist()
        possible = len(full)
    else:  # labeled-list
        rows_kept = kept.any(dim=1).nonzero(as_tuple=True)[0].tolist()
        data = {anchor_name: [pair_queries[r] for r in rows_kept],
                positive_name: [[pair_positives[r]] + [corpus[i] for i in pair_indices[r][kept[r]].tolist()]
                                for r in rows_kept]}
        if output_scores:
            data["scores"] = [[float(positive_scores[r])] + pair_scores[r][kept[r]].tolist() for r in rows_kept]
        else:
            data["labels"] = [[1] + [0] * int(kept[r].sum()) for r in rows_kept]
        possible = len(kept)
    output = Dataset.from_dict(data)
    if verbose:
        _report(positive_scores, pair_scores, kept, output_format, counters, len(output), possible,
                dict(absolute_margin=absolute_margin, relative_margin=relative_margin, max_score=max_score,
                     min_score=min_score, range_min=range_min))
    return output


def _report(positive_scores: torch.Tensor, pair_scores: torch.Tensor, kept: torch.Tensor, output_format: str,
            counters: dict, rows: int, possible: int, settings: dict) -> None:
    """The statistics table sentence-transformers prints: positive and negative scores and their difference."""
    if output_format == "n-tuple":
        kept = kept & kept.all(dim=1, keepdim=True)
    negatives = pair_scores[kept]
    differences = (positive_scores[:, None].expand_as(pair_scores))[kept] - negatives
    print(f"{'Metric':<6} {'Positive':>14} {'Negative':>14} {'Difference':>14}")
    print(f"{'Count':<6} {len(positive_scores):>14,} {len(negatives):>14,} {'':>14}")
    stats = [("Mean", torch.mean), ("Median", torch.median), ("Std", torch.std), ("Min", torch.min),
             ("25%", lambda x: torch.quantile(x, 0.25)), ("50%", lambda x: torch.quantile(x, 0.5)),
             ("75%", lambda x: torch.quantile(x, 0.75)), ("Max", torch.max)]
    for label, function in stats:
        cells = [f"{float(function(x)):.4f}" if x.numel() else "nan" for x in (positive_scores, negatives, differences)]
        print(f"{label:<6} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")
    for name, (skipped, ratio) in counters.items():
        print(f"Skipped {skipped:,} potential negatives ({ratio:.2%}) due to the {name} of {settings[name]}.")
    if possible > rows:
        knobs = ["range_max"] + [k for k in ("range_min", "absolute_margin", "relative_margin", "max_score")
                                 if settings.get(k) not in (None, 0)]
        print(f"Could not find enough negatives for {possible - rows} samples ({(possible - rows) / possible:.2%}). "
              f"Consider adjusting {', '.join(knobs)} if you'd like more valid negatives.")
