"""Loaders for the metadata of the standard spurious-correlation benchmarks.

The user supplies the files (the data sets are not redistributed here). Each loader
parses only the on-disk *metadata* -- no images are opened and no text model is run --
into class labels, group ids and the train/val/test assignment, with group ids defined
as the papers that introduced the benchmark layouts define them:

=============  ===============================  ==========================================
loader         files read (in ``root``)         groups
=============  ===============================  ==========================================
Waterbirds     ``metadata.csv``                 ``2*y + place`` (y: waterbird, place: water)
CelebA         ``list_attr_celeba.txt``,        ``2*y + male`` (y: Blond_Hair)
               ``list_eval_partition.txt``
MultiNLI       ``metadata_random.csv``          ``2*y + negation`` (6 groups)
CivilComments  ``all_data_with_identities.csv`` ``2*y + any identity`` (4 groups)
=============  ===============================  ==========================================

Every loader returns, for ``split=None``, a dict ``{"train", "val", "test"}`` of
:class:`StandardSplit`; for ``split="train"`` (etc.) just that one split. A
:class:`StandardSplit` carries the image paths or texts of its rows in file order; embed
them with any model, then call :func:`to_embedding_set` to get an
:class:`~pydebias.data.EmbeddingSet` for the methods.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .embedding_set import EmbeddingSet

__all__ = ["StandardSplit", "to_embedding_set", "load_waterbirds", "load_celeba",
           "load_multinli", "load_civilcomments", "SPLITS"]

SPLITS = ("train", "val", "test")
_CODE_TO_SPLIT = {0: "train", 1: "val", 2: "test"}

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class StandardSplit:
    """Metadata of one split of a standard benchmark, rows in the order of the file.

    Attributes
    ----------
    name : the benchmark ("waterbirds", "celeba", "multinli", "civilcomments").
    split : "train", "val" or "test".
    paths_or_texts : per row, the image path (joined with the data set root) or the
        text (CivilComments comment) or row id (MultiNLI; see :func:`load_multinli`).
    labels : (N,) int64 class ids.
    groups : (N,) int64 group ids, ``n_classes_per_attribute * y + attribute``.
    attributes : (N,) int64 0/1 spurious attribute the groups are built from.
    indices : (N,) int64 row positions in the metadata file (0-based, header not
        counted), to pick these rows out of features computed for the whole file.
    n_classes, n_groups : totals for the benchmark (a split may lack some groups).
    class_names, group_names : readable names, indexed by class / group id.
    """

    name: str
    split: str
    paths_or_texts: List[str]
    labels: np.ndarray
    groups: np.ndarray
    attributes: np.ndarray
    indices: np.ndarray
    n_classes: int
    n_groups: int
    class_names: Tuple[str, ...]
    group_names: Tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def group_counts(self) -> np.ndarray:
        """Number of rows in each group, length ``n_groups``."""
        return np.bincount(self.groups, minlength=self.n_groups)

    def __repr__(self) -> str:
        return (f"StandardSplit(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.n_classes}, groups={self.n_groups})")


def to_embedding_set(split: StandardSplit, features, check_finite: bool = True) -> EmbeddingSet:
    """An :class:`EmbeddingSet` of ``features`` computed for the rows of ``split``.

    ``features`` must have one row per row of ``split``, in the same order
    (``split.paths_or_texts`` order). Features computed for every row of the metadata
    file can be cut down first with ``features[split.indices]``.
    """
    shape = getattr(features, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] != len(split):
        raise ValueError(
            f"features: {shape[0]} rows but split {split.name}/{split.split} has {len(split)} rows; "
            "pass one row per entry of split.paths_or_texts (features for the whole file: "
            "features[split.indices])")
    return EmbeddingSet(features, split.labels, groups=split.groups, name=split.name,
                        split=split.split, n_classes=split.n_classes, n_groups=split.n_groups,
                        check_finite=check_finite)


# -- helpers ------------------------------------------------------------------------------

def _need_file(root: PathLike, filename: str, dataset: str, where: str,
               subdirs: Sequence[str] = ()) -> str:
    """Path of ``filename`` in ``root`` (or one of ``subdirs``), else FileNotFoundError."""
    root = os.fspath(root)
    for d in ("",) + tuple(subdirs):
        p = os.path.join(root, d, filename)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(
        f"{os.path.join(root, filename)}: {dataset} metadata file '{filename}' not found; "
        f"point root at the {dataset} directory that holds it ({where})")


def _check_split_arg(split: Optional[str]) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS} or None, got {split!r}")


def _read_text(path: str) -> str:
    """A metadata file's text (UTF-8, a BOM allowed); ValueError naming the file otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8") from None


#: the longest CSV field read (Python's csv module stops at 131,072 characters by default)
MAX_CSV_FIELD = 1 << 24


def _read_csv(path: str, required: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of a CSV file; ValueError naming the file and line for bad quoting
    (an unbalanced quote would otherwise merge rows), and any required column missing."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, MAX_CSV_FIELD))
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: file is empty (expected a header row)")
        header = [h.strip() for h in header]
        for col in required:
            if col not in header:
                raise ValueError(f"{col}: column missing from {path}; found columns {header}")
        rows = [r for r in reader if r]
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: {e} (an unbalanced quote?)") from None
    finally:
        csv.field_size_limit(limit)
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"{path}: data row {i} has {len(r)} fields, the header has {len(header)}")
    return header, rows


def _int_value(text: str, col: str, row: int, path: str, allowed: Sequence[int]) -> int:
    """Parse an integer id ("1", "1.0", "True"), checking it is one of ``allowed``."""
    t = text.strip()
    low = t.lower()
    try:
        if low in ("true", "false"):
            v = int(low == "true")
        else:
            f = float(t)
            if not f.is_integer():
                raise ValueError
            v = int(f)
    except ValueError:
        raise ValueError(f"{col}: data row {row} of {path} holds {text!r}; "
                         f"expected one of {list(allowed)}") from None
    if v not in allowed:
        raise ValueError(f"{col}: data row {row} of {path} holds {v}; expected one of {list(allowed)}")
    return v


def _float_value(text: str, col: str, row: int, path: str, missing_ok: bool) -> float:
    t = text.strip()
    try:
        v = float(t) if t else math.nan
    except ValueError:
        raise ValueError(f"{col}: data row {row} of {path} holds {text!r}; expected a number") from None
    if not math.isfinite(v) and not missing_ok:
        raise ValueError(f"{col}: data row {row} of {path} is missing or not finite ({text!r})")
    return v


def _fraction_value(text: str, col: str, row: int, path: str, missing_ok: bool) -> float:
    """A rater fraction in [0, 1] (CivilComments' toxicity and identity columns)."""
    v = _float_value(text, col, row, path, missing_ok)
    if not (v != v or 0.0 <= v <= 1.0):
        raise ValueError(f"{col}: data row {row} of {path} holds {v}; expected a fraction in [0, 1]")
    return v


def _assemble(name: str, items: Sequence[str], y, a, split_names: Sequence[str],
              n_classes: int, class_names, group_names, split: Optional[str]):
    """Build the StandardSplit(s) from per-row arrays (groups = 2*y + a)."""
    y = np.asarray(y, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    g = 2 * y + a
    split_arr = np.asarray(split_names, dtype=object)
    wanted = SPLITS if split is None else (split,)
    out: Dict[str, StandardSplit] = {}
    for s in wanted:
        idx = np.flatnonzero(split_arr == s).astype(np.int64)
        out[s] = StandardSplit(
            name=name, split=s, paths_or_texts=[items[i] for i in idx], labels=y[idx],
            groups=g[idx], attributes=a[idx], indices=idx, n_classes=n_classes,
            n_groups=2 * n_classes, class_names=tuple(class_names), group_names=tuple(group_names))
    return out if split is None else out[split]


# -- Waterbirds ---------------------------------------------------------------------------

def load_waterbirds(root: PathLike, split: Optional[str] = None):
    """Waterbirds (Sagawa et al. 2020, group DRO) from ``root/metadata.csv``.

    Columns used: ``img_filename`` (relative to ``root``), ``y`` (1 = waterbird),
    ``place`` (1 = water background) and ``split`` (0 = train, 1 = val, 2 = test); other
    columns (``img_id``, ``place_filename``) are ignored. Groups follow group DRO:
    ``group = 2*y + place``, i.e. 0 landbird/land, 1 landbird/water, 2 waterbird/land,
    3 waterbird/water. ``paths_or_texts`` are ``root/img_filename``.

    Returns a dict of the three :class:`StandardSplit` for ``split=None``, else one.
    """
    _check_split_arg(split)
    path = _need_file(root, "metadata.csv", "Waterbirds",
                      "the Waterbirds data set of the group DRO release, e.g. "
                      "waterbird_complete95_forest2water2")
    header, rows = _read_csv(path, ("img_filename", "y", "split", "place"))
    ci = {c: header.index(c) for c in ("img_filename", "y", "split", "place")}
    root_s = os.fspath(root)
    items, y, a, sp = [], [], [], []
    for i, r in enumerate(rows):
        items.append(os.path.join(root_s, r[ci["img_filename"]].strip()))
        y.append(_int_value(r[ci["y"]], "y", i, path, (0, 1)))
        a.append(_int_value(r[ci["place"]], "place", i, path, (0, 1)))
        sp.append(_CODE_TO_SPLIT[_int_value(r[ci["split"]], "split", i, path, (0, 1, 2))])
    return _assemble("waterbirds", items, y, a, sp, 2, ("landbird", "waterbird"),
                     ("landbird_land", "landbird_water", "waterbird_land", "waterbird_water"),
                     split)


# -- CelebA -------------------------------------------------------------------------------

_CELEBA_WHERE = ("CelebA, the Large-scale CelebFaces Attributes data set: Anno/list_attr_celeba.txt "
                 "and Eval/list_eval_partition.txt")


def load_celeba(root: PathLike, split: Optional[str] = None):
    """CelebA with target ``Blond_Hair`` and spurious attribute ``Male`` (group DRO).

    Reads ``list_attr_celeba.txt`` (line 1: number of images; line 2: the 40 attribute
    names; then ``filename v1 v2 ...`` with values 1/-1, whitespace separated) and
    ``list_eval_partition.txt`` (``filename split``, 0 = train, 1 = val, 2 = test), found
    in ``root`` or, as in the official download, ``root/Anno`` and ``root/Eval``.
    ``y = Blond_Hair == 1``, ``male = Male == 1`` and ``group = 2*y + male``: 0 not blond
    female, 1 not blond male, 2 blond female, 3 blond male. ``paths_or_texts`` are
    ``root/img_align_celeba/<filename>``; rows follow the attribute file's order.

    Returns a dict of the three :class:`StandardSplit` for ``split=None``, else one.
    """
    _check_split_arg(split)
    attr_path = _need_file(root, "list_attr_celeba.txt", "CelebA", _CELEBA_WHERE, ("Anno",))
    part_path = _need_file(root, "list_eval_partition.txt", "CelebA", _CELEBA_WHERE, ("Eval",))

    lines = [ln for ln in _read_text(attr_path).splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{attr_path}: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{attr_path}: first line should be the number of images, "
                         f"got {lines[0]!r}") from None
    names = lines[1].split()
    for col in ("Blond_Hair", "Male"):
        if col not in names:
            raise ValueError(f"{col}: attribute missing from {attr_path}; found {names}")
    jy, ja = names.index("Blond_Hair") + 1, names.index("Male") + 1
    body = lines[2:]
    if len(body) != count:
        raise ValueError(f"{attr_path}: header says {count} images but the file lists {len(body)}")

    part: Dict[str, int] = {}
    for i, ln in enumerate(ln for ln in _read_text(part_path).splitlines() if ln.strip()):
        parts = ln.split()
        if len(parts) != 2:
            raise ValueError(f"{part_path}: line {i + 1} should be 'filename split', got {ln!r}")
        if parts[0] in part:
            raise ValueError(f"{part_path}: line {i + 1} lists {parts[0]!r} a second time")
        part[parts[0]] = _int_value(parts[1], "split", i, part_path, (0, 1, 2))

    img_dir = os.path.join(os.fspath(root), "img_align_celeba")
    pm = {"1": 1, "-1": 0}
    items, y, a, sp = [], [], [], []
    seen = set()
    for i, ln in enumerate(body):
        parts = ln.split()
        if len(parts) != len(names) + 1:
            raise ValueError(f"{attr_path}: data row {i} has {len(parts) - 1} values for "
                             f"{len(names)} attributes")
        fn = parts[0]
        if fn in seen:
            raise ValueError(f"{attr_path}: data row {i} lists {fn!r} a second time")
        seen.add(fn)
        for col, j, dst in (("Blond_Hair", jy, y), ("Male", ja, a)):
            v = pm.get(parts[j])
            if v is None:
                raise ValueError(f"{col}: data row {i} ({fn}) of {attr_path} holds {parts[j]!r}; "
                                 "expected 1 or -1")
            dst.append(v)
        if fn not in part:
            raise ValueError(f"{part_path}: no split listed for {fn} (data row {i} of {attr_path})")
        sp.append(_CODE_TO_SPLIT[part[fn]])
        items.append(os.path.join(img_dir, fn))
    return _assemble("celeba", items, y, a, sp, 2, ("not_blond", "blond"),
                     ("not_blond_female", "not_blond_male", "blond_female", "blond_male"), split)


# -- MultiNLI -----------------------------------------------------------------------------

def load_multinli(root: PathLike, split: Optional[str] = None):
    """MultiNLI in the group DRO layout, from ``root/metadata_random.csv``.

    Columns used: ``gold_label`` (0 = contradiction, 1 = entailment, 2 = neutral, as in
    group DRO), ``sentence2_has_negation`` (0/1) and ``split`` (0 = train, 1 = val,
    2 = test). ``group = 2*y + negation`` (6 groups: contradiction without / with
    negation, entailment ..., neutral ...).

    The metadata file holds no text: the sentence pairs (and group DRO's cached BERT
    features) are row-aligned with it. ``paths_or_texts`` therefore holds each row's id:
    the value of the file's unnamed first (index) column when it has one, else the row
    position. Embed the pairs in file order and cut per split with ``split.indices``.

    Returns a dict of the three :class:`StandardSplit` for ``split=None``, else one.
    """
    _check_split_arg(split)
    path = _need_file(root, "metadata_random.csv", "MultiNLI",
                      "the MultiNLI metadata of the group DRO release (Sagawa et al. 2020)")
    cols = ("gold_label", "sentence2_has_negation", "split")
    header, rows = _read_csv(path, cols)
    ci = {c: header.index(c) for c in cols}
    id_col = 0 if header[0] == "" else None
    items, y, a, sp = [], [], [], []
    for i, r in enumerate(rows):
        items.append(r[id_col].strip() if id_col is not None else str(i))
        y.append(_int_value(r[ci["gold_label"]], "gold_label", i, path, (0, 1, 2)))
        a.append(_int_value(r[ci["sentence2_has_negation"]], "sentence2_has_negation", i, path,
                            (0, 1)))
        sp.append(_CODE_TO_SPLIT[_int_value(r[ci["split"]], "split", i, path, (0, 1, 2))])
    classes = ("contradiction", "entailment", "neutral")
    group_names = tuple(f"{c}_{n}" for c in classes for n in ("no_negation", "negation"))
    return _assemble("multinli", items, y, a, sp, 3, classes, group_names, split)


# -- CivilComments ------------------------------------------------------------------------

CIVILCOMMENTS_IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions",
                            "black", "white")


def load_civilcomments(root: PathLike, split: Optional[str] = None):
    """CivilComments in the WILDS layout, from ``root/all_data_with_identities.csv``.

    Columns used: ``comment_text``, ``split`` ("train" / "val" / "test"), ``toxicity``
    (``y = toxicity >= 0.5``) and the eight WILDS identity columns ``male, female, LGBTQ,
    christian, muslim, other_religions, black, white`` (an identity is present when its
    value is >= 0.5; an empty cell counts as absent, as in WILDS' comparison).

    Group definition used here: the common 4-group "any identity" version (as in JTT and
    later last-layer retraining work): ``attribute = 1`` when any of the eight identities
    is present, ``group = 2*y + attribute`` -- 0 non-toxic/no identity, 1 non-toxic/
    identity, 2 toxic/no identity, 3 toxic/identity. (WILDS' own evaluation instead
    reports the worst of 16 overlapping identity x label groups.) ``paths_or_texts``
    are the comment texts.

    Returns a dict of the three :class:`StandardSplit` for ``split=None``, else one.
    """
    _check_split_arg(split)
    path = _need_file(root, "all_data_with_identities.csv", "CivilComments",
                      "the CivilComments-WILDS data set, civilcomments_v1.0")
    cols = ("comment_text", "split", "toxicity") + CIVILCOMMENTS_IDENTITIES
    header, rows = _read_csv(path, cols)
    ci = {c: header.index(c) for c in cols}
    id_idx = [ci[c] for c in CIVILCOMMENTS_IDENTITIES]
    items, y, a, sp = [], [], [], []
    for i, r in enumerate(rows):
        s = r[ci["split"]].strip()
        if s not in SPLITS:
            raise ValueError(f"split: data row {i} of {path} holds {s!r}; expected one of {SPLITS}")
        sp.append(s)
        items.append(r[ci["comment_text"]])
        y.append(int(_fraction_value(r[ci["toxicity"]], "toxicity", i, path, False) >= 0.5))
        present = 0
        for c, j in zip(CIVILCOMMENTS_IDENTITIES, id_idx):
            if _fraction_value(r[j], c, i, path, True) >= 0.5:  # NaN >= 0.5 is False
                present = 1
        a.append(present)
    return _assemble("civilcomments", items, y, a, sp, 2, ("non_toxic", "toxic"),
                     ("non_toxic_no_identity", "non_toxic_identity", "toxic_no_identity",
                      "toxic_identity"), split)
