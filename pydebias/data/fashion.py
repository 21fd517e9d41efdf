"""Built-in Fashion-MNIST benchmarks with a planted shortcut (details: docs/data.md).

``colored-fashion``: classes 0-4 vs 5-9, the image's red / green tint is the attribute.
``fashion-on-textures`` (the Waterbirds analogue): tops vs footwear pasted on a crop of
a grass or brick photograph from ``skimage.data``. In both ``a == y`` with probability
``corr`` in train, ``val_corr`` in val (default as train; ``val_balanced=True``: 0.5) and
0.5 in test; groups ``g = 2*y + a``.

``fashion-square`` (MaskTune's biased MNIST, RR-ClArC's concept data): all ten classes,
a white ``SQUARE_SIZE`` square at ``SQUARE_AT`` in ``corr`` (0.99) of the attacked
class's train images and ``other_rate`` (0.01) of the others'; in half of every class's
test images (20 groups). Each set carries ``concepts`` = a.

Backbone: :class:`pydebias.models.SmallCNN` (64-d), pretrained on all ten classes with
the attribute drawn at random, then fine-tuned by ERM on the biased train split
(``two_stage=False``: from scratch). Weights and embeddings are cached
(:mod:`pydebias.data.cache`). Source files: the Debian package ``dataset-fashion-mnist``
or any directory given as ``root``.
"""
from __future__ import annotations

import functools
import gzip
import os
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ._spurious import attribute_for, check_probability, resolve_correlations
from ..models import SmallCNN, embed_batches, train_classifier
from . import cache
from .embedding_set import EmbeddingSet

__all__ = ["FASHION_ROOT", "read_idx", "load_fashion_mnist", "load_colored_fashion",
           "load_fashion_on_textures", "load_fashion_square", "paste_square",
           "COLORED_FASHION_GROUPS", "TEXTURE_GROUPS", "FASHION_CLASSES", "SQUARE_GROUPS"]

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_INSTALL_HINT = ("Fashion-MNIST not found in {root!r} (missing {name}). Install it with "
                 "`apt-get install dataset-fashion-mnist` (files go to " + FASHION_ROOT
                 + "), or pass root= a directory holding the four *-ubyte.gz files.")

# idx type codes -> numpy dtypes (big-endian as stored)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: tint colours (R, G, B) by attribute value: 0 = red, 1 = green
TINTS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
COLORED_FASHION_GROUPS = ["y=0,red", "y=0,green", "y=1,red", "y=1,green"]
#: fashion-on-textures: y by Fashion-MNIST class (-1 = not used); 0 tops, 1 footwear
TEXTURE_CLASSES = np.array([0, -1, 0, -1, -1, 1, 0, 1, -1, 1])
TEXTURE_NAMES = ("grass", "brick")
TEXTURE_GROUPS = ["tops,grass", "tops,brick", "footwear,grass", "footwear,brick"]
#: Fashion-MNIST class names by label
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
#: fashion-square: side and top-left (row, column) of the pasted square
SQUARE_SIZE = 4
SQUARE_AT = (0, 0)
SQUARE_GROUPS = [f"{c}, {s}" for c in FASHION_CLASSES for s in ("no square", "square")]
#: fashion-square ``binary=True`` (MaskTune's biased MNIST: digits 0-4 vs 5-9): y by class
BINARY_CLASSES = np.array([0] * 5 + [1] * 5)
BINARY_SQUARE_GROUPS = [f"classes {c}, {s}" for c in ("0-4", "5-9") for s in ("no square", "square")]


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (``.gz`` compressed or plain) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx data type code 0x{code:02x}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims)) if dims else 1
    need = 4 + 4 * ndim + count * dtype.itemsize
    if len(data) != need:
        raise ValueError(f"{path}: expected {need} bytes for shape {dims}, found {len(data)}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=4 + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(_INSTALL_HINT.format(root=root, name=stem + ".gz"))


@functools.lru_cache(maxsize=2)
def _load_cached(root: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (img, lab) in _FILES.items():
        x, y = read_idx(_find(root, img)), read_idx(_find(root, lab))
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{root}: {split} images {x.shape} and labels {y.shape} do not match")
        x.flags.writeable = False
        y = y.astype(np.int64)
        y.flags.writeable = False
        out[split] = (x, y)
    return out


def load_fashion_mnist(root: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``{'train': (images, labels), 'test': (images, labels)}``, images (N, 28, 28) uint8.

    Looks in ``root`` (default :data:`FASHION_ROOT`); arrays are read-only and kept in
    memory for the next call. Raises FileNotFoundError naming the package when missing.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root if root is not None else FASHION_ROOT)))
    if not os.path.isdir(root):
        raise FileNotFoundError(_INSTALL_HINT.format(root=root, name="the directory"))
    return _load_cached(root)


# -- renderers: grayscale source images + attribute -> model input batches ------
class _Tinted:
    """Grayscale images + tint ids + labels; builds (B, 3, 28, 28) float batches."""

    channels = 3

    def __init__(self, images: np.ndarray, attr: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator):
        self.images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
        self.attr = torch.from_numpy(attr.astype(np.int64))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.colors = torch.from_numpy(TINTS)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: np.ndarray):
        i = torch.from_numpy(np.asarray(index, dtype=np.int64))
        gray = self.images[i].to(torch.float32).div_(255.0).unsqueeze(1)  # (B, 1, H, W)
        x = gray * self.colors[self.attr[i]][:, :, None, None]          # (B, 3, H, W)
        return x, self.labels[i]


@functools.lru_cache(maxsize=4)
def _texture(name: str, scale: int) -> np.ndarray:
    """A skimage.data photograph as float32 in [0, 1], block-averaged by ``scale``."""
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fashion-on-textures and fashion-on-photos need scikit-image for their "
                          "background photographs: `pip install scikit-image`") from e
    t = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if t.ndim == 3:
        t = t[..., :3].mean(axis=2)
    h, w = (t.shape[0] // scale) * scale, (t.shape[1] // scale) * scale
    t = t[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
    t.flags.writeable = False
    return t


class _Gray(_Tinted):
    """Prerendered 1-channel uint8 images; batches are (B, 1, 28, 28) floats in [0, 1]."""

    channels = 1

    def batch(self, index: np.ndarray):
        i = torch.from_numpy(np.asarray(index, dtype=np.int64))
        return self.images[i].to(torch.float32).div_(255.0).unsqueeze(1), self.labels[i]


class _Textured(_Gray):
    """Objects pasted on a random crop of a texture (one per attribute value), 1 channel.

    The composite is made once, at construction, with ``rng`` drawing the crop and the
    object's position: the object is shrunk by ``shrink`` (block mean; 28 -> 14 px, so
    like a Waterbirds bird it covers a small part of the picture), put at a random place
    and blended, ``out = alpha * object + (1 - alpha) * background`` with the matte
    ``alpha = opacity * min(1, object / 0.15)`` (a dark interior stays opaque).
    """

    scale = 2       # texture photographs block-averaged 512 -> 256 px before cropping
    shrink = 2
    opacity = 1.0

    def __init__(self, images: np.ndarray, attr: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator):
        n, h, w = images.shape
        k = self.shrink
        oh, ow = h // k, w // k
        out = np.empty((n, h, w), dtype=np.uint8)
        for a, name in enumerate(TEXTURE_NAMES):
            rows = np.flatnonzero(attr == a)
            tex = _texture(name, self.scale)
            ys = rng.integers(0, tex.shape[0] - h + 1, size=rows.size)
            xs = rng.integers(0, tex.shape[1] - w + 1, size=rows.size)
            py = rng.integers(0, h - oh + 1, size=rows.size)
            px = rng.integers(0, w - ow + 1, size=rows.size)
            win = np.lib.stride_tricks.sliding_window_view(tex, (h, w))  # a view, no copy
            for s in range(0, rows.size, 2048):
                r, sl = rows[s:s + 2048], slice(s, s + 2048)
                small = images[r, :oh * k, :ow * k].astype(np.float32).reshape(
                    r.size, oh, k, ow, k).mean(axis=(2, 4)) / 255.0
                obj = np.zeros((r.size, h, w), dtype=np.float32)
                at = np.arange(r.size)[:, None, None]
                obj[at, py[sl, None, None] + np.arange(oh)[None, :, None],
                    px[sl, None, None] + np.arange(ow)[None, None, :]] = small
                alpha = self.opacity * np.minimum(obj / 0.15, 1.0)
                out[r] = np.rint(255.0 * (alpha * obj + (1.0 - alpha) * win[ys[sl], xs[sl]])).astype(np.uint8)
        super().__init__(out, attr, labels, rng)


def paste_square(x):
    """A copy of ``x`` (``(..., 28, 28)`` numpy array or torch tensor) with the
    fashion-square square pasted: white (255 for uint8, else 1.0) at :data:`SQUARE_AT`.

    Attacked inputs for a loaded ``fashion-square`` (square in every image):
    ``x, y = d["inputs"]("test"); x_attacked = paste_square(x)``.
    """
    out = x.clone() if torch.is_tensor(x) else np.array(x, copy=True)
    white = 255 if out.dtype in (np.uint8, torch.uint8) else 1.0
    r, c = SQUARE_AT
    out[..., r:r + SQUARE_SIZE, c:c + SQUARE_SIZE] = white
    return out


class _Squared(_Gray):
    """Grayscale images with the square pasted (by :func:`paste_square`) where attr == 1."""

    def __init__(self, images: np.ndarray, attr: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator):
        out = np.array(images, dtype=np.uint8, copy=True)
        on = np.flatnonzero(attr == 1)
        out[on] = paste_square(out[on])
        super().__init__(out, attr, labels, rng)


# -- the shared builder ----------------------------------------------------------
#: draw_attr(rng, y, split, p) -> (n,) 0/1 attribute; p is corr / val_corr / 0.5 by split
AttrFn = Callable[[np.random.Generator, np.ndarray, str, float], np.ndarray]


def _attr_equals_label(rng: np.random.Generator, y: np.ndarray, split: str, p: float) -> np.ndarray:
    return attribute_for(rng, y, p)


def _build(name: str, renderer, y_of_class: np.ndarray, group_names, root, seed, corr, val_corr,
           val_balanced, two_stage, cache_dir, n_train, n_val, n_test, n_pretrain, pretrain_epochs,
           epochs, lr, batch_size, embed_dim, use_cache, *, n_classes: int = 2,
           draw_attr: AttrFn = _attr_equals_label, extra_params: Optional[Dict] = None,
           concepts: bool = False) -> Dict:
    """Build one benchmark. ``n_classes``: labels ``y_of_class`` maps to (groups
    ``2*y + a``, so ``2*n_classes`` of them); ``draw_attr`` draws the attribute of each
    split; ``extra_params`` join the cache key (those named ``val_*`` only the
    embeddings', not the backbone's); ``concepts=True`` stores a as the concept labels."""
    corr, val_corr = resolve_correlations(corr, val_corr, val_balanced)
    for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(v) < 1:
            raise ValueError(f"{k}: expected a positive count, got {v}")
    if two_stage and (int(n_pretrain) < 1 or int(pretrain_epochs) < 1):
        raise ValueError("n_pretrain, pretrain_epochs: two_stage=True needs both >= 1")
    if not two_stage:
        n_pretrain, pretrain_epochs = 0, 0

    data = load_fashion_mnist(root)
    x_pool, c_pool = data["train"]
    x_test_pool, c_test_pool = data["test"]
    usable = np.flatnonzero(y_of_class[c_pool] >= 0)
    usable_test = np.flatnonzero(y_of_class[c_test_pool] >= 0)
    if n_train + n_val > usable.size or n_train + n_val + n_pretrain > x_pool.shape[0]:
        raise ValueError(f"n_train + n_val = {n_train + n_val} (plus n_pretrain = {n_pretrain}) exceeds "
                         f"the {usable.size} usable ({x_pool.shape[0]} in all) official training images")
    if n_test > usable_test.size:
        raise ValueError(f"n_test: {n_test} exceeds the {usable_test.size} usable official test images")

    params = dict(corr=corr, val_corr=val_corr, two_stage=bool(two_stage), n_train=int(n_train),
                  n_val=int(n_val), n_test=int(n_test), n_pretrain=int(n_pretrain),
                  pretrain_epochs=int(pretrain_epochs), epochs=int(epochs), lr=float(lr),
                  batch_size=int(batch_size), embed_dim=int(embed_dim))
    params.update(extra_params or {})
    key = cache.cache_key(name, params, seed)
    path = os.path.join(cache.cache_root(cache_dir), f"{name}-{key[:24]}.pt")

    # -- splits (cheap, always rebuilt; the cached groups are cross-checked) -------
    ss_split, ss_attr, ss_pre, ss_ft, ss_torch, ss_render = np.random.SeedSequence(seed).spawn(6)
    rng_split, rng_attr = np.random.default_rng(ss_split), np.random.default_rng(ss_attr)
    rng_render = np.random.default_rng(ss_render)
    perm = rng_split.permutation(x_pool.shape[0])
    task = perm[y_of_class[c_pool[perm]] >= 0]          # usable images, in permuted order
    idx = {"train": np.sort(task[:n_train]), "val": np.sort(task[n_train:n_train + n_val])}
    taken = np.zeros(x_pool.shape[0], dtype=bool)
    taken[idx["train"]] = taken[idx["val"]] = True
    idx["pretrain"] = perm[~taken[perm]][:n_pretrain]
    idx["test"] = np.sort(usable_test[rng_split.choice(usable_test.size, size=n_test, replace=False)])
    sets = {}
    for split, p in (("train", corr), ("val", val_corr), ("test", 0.5)):
        xs, cs = (x_test_pool, c_test_pool) if split == "test" else (x_pool, c_pool)
        y = y_of_class[cs[idx[split]]].astype(np.int64)
        sets[split] = renderer(xs[idx[split]], draw_attr(rng_attr, y, split, p), y, rng_render)

    def pretrain_set():  # rendered only when it is trained on (draws come last, so order-safe)
        classes = c_pool[idx["pretrain"]]
        return renderer(x_pool[idx["pretrain"]], rng_attr.integers(0, 2, size=classes.shape[0]),
                        classes, rng_render)

    groups = {s: (2 * sets[s].labels + sets[s].attr).numpy() for s in ("train", "val", "test")}

    t0 = time.perf_counter()
    cached = cache.load_cache(path) if use_cache else None
    if cached is not None and not all(np.array_equal(cached["groups"][s].numpy(), groups[s]) for s in groups):
        cached = None  # stale (e.g. other source files under the same parameters): rebuild
    model = SmallCNN(n_classes=n_classes, in_channels=renderer.channels, embed_dim=embed_dim)
    # The backbone depends on train (and pretraining) data only: one trained for another
    # val_corr (val_*) is reused, and only the embeddings are extracted again.
    bb_params = {k: v for k, v in params.items() if not k.startswith("val_")}
    bb_path = os.path.join(cache.cache_root(cache_dir),
                           f"{name}-backbone-{cache.cache_key(name, bb_params, seed)[:24]}.pt")
    if cached is not None:
        model.load_state_dict(cached["state_dict"])
        feats = {s: cached["features"][s].numpy() for s in groups}
        log = cached.get("log", {})
    else:
        bb = cache.load_cache(bb_path) if use_cache else None
        if bb is not None:
            model.load_state_dict(bb["state_dict"])
            log = bb.get("log", {})
        else:
            log = {}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(ss_torch.generate_state(1, dtype=np.uint32)[0]))
                if two_stage:
                    pre = pretrain_set()
                    model = SmallCNN(n_classes=10, in_channels=renderer.channels, embed_dim=embed_dim)
                    log["pretrain"] = train_classifier(
                        model, pre.batch, len(pre), pretrain_epochs, np.random.default_rng(ss_pre),
                        lr=lr, batch_size=batch_size)
                    model.reset_head(n_classes)
                else:
                    model = SmallCNN(n_classes=n_classes, in_channels=renderer.channels,
                                               embed_dim=embed_dim)
                log["erm"] = train_classifier(
                    model, sets["train"].batch, len(sets["train"]), epochs, np.random.default_rng(ss_ft),
                    lr=lr, batch_size=batch_size)
            if use_cache:
                cache.save_cache(bb_path, {"state_dict": model.state_dict(), "params": bb_params,
                                               "seed": int(seed), "version": cache.CODE_VERSION, "log": log})
        feats = {s: embed_batches(model, sets[s].batch, len(sets[s])) for s in groups}
        if use_cache:
            cache.save_cache(path, {
                "state_dict": model.state_dict(),
                "features": {s: torch.from_numpy(f) for s, f in feats.items()},
                "groups": {s: torch.from_numpy(g) for s, g in groups.items()},
                "params": params, "seed": int(seed), "version": cache.CODE_VERSION, "log": log})
    model.eval()

    out = {}
    for s in ("train", "val", "test"):
        out[s] = EmbeddingSet(feats[s], sets[s].labels.numpy(), groups=groups[s],
                              concepts=sets[s].attr.numpy() if concepts else None, name=name, split=s,
                              n_classes=n_classes, n_groups=2 * n_classes)
    out["group_names"] = list(group_names)

    def inputs(split: str, index: Optional[np.ndarray] = None):
        """Model inputs and labels of ``split`` rows ``index`` (default all), in row order."""
        r = sets[split]
        return r.batch(np.arange(len(r)) if index is None else index)

    out["inputs"] = inputs
    out["backbone"] = model
    out["head"] = model.head
    out["info"] = {"params": params, "seed": int(seed), "cache_path": path if use_cache else None,
                   "from_cache": cached is not None, "seconds": time.perf_counter() - t0, "log": log}
    return out


_DOC_RETURNS = """
    Returns ``{'train', 'val', 'test'}`` :class:`EmbeddingSet` s (``embed_dim``-d float32
    penultimate embeddings, labels y, groups ``2*y + a``), ``'group_names'``,
    ``'backbone'`` (the fine-tuned :class:`~pydebias.models.SmallCNN`, eval mode),
    ``'head'`` (its own :class:`torch.nn.Linear` head: the ERM model on the embeddings),
    ``'inputs'`` (``inputs(split, index=None) -> (x, y)`` tensors: the rendered images
    the embeddings were computed from, for input-level methods) and ``'info'``
    (parameters, cache path, whether it came from the cache, seconds, training log).

    ``epochs`` is the number of ERM epochs on the biased task (stage 2, or the only stage
    when ``two_stage=False``); ``pretrain_epochs`` / ``n_pretrain`` size stage 1.
    Same seed (and torch thread count) -> identical embeddings.
    """


def load_colored_fashion(root: Optional[str] = None, seed: int = 0, corr: float = 0.95,
                         val_corr: Optional[float] = None, val_balanced: bool = False,
                         two_stage: bool = True, cache_dir: Optional[str] = None,
                         n_train: int = 20000, n_val: int = 5000, n_test: int = 5000,
                         n_pretrain: int = 30000, pretrain_epochs: int = 3, epochs: int = 3,
                         lr: float = 1e-3, batch_size: int = 128, embed_dim: int = 64,
                         use_cache: bool = True) -> Dict:
    return _build("colored-fashion", _Tinted, np.array([0] * 5 + [1] * 5), COLORED_FASHION_GROUPS,
                  root, seed, corr, val_corr, val_balanced, two_stage, cache_dir, n_train, n_val,
                  n_test, n_pretrain, pretrain_epochs, epochs, lr, batch_size, embed_dim, use_cache)


def load_fashion_on_textures(root: Optional[str] = None, seed: int = 0, corr: float = 0.95,
                             val_corr: Optional[float] = None, val_balanced: bool = False,
                             two_stage: bool = True, cache_dir: Optional[str] = None,
                             n_train: int = 20000, n_val: int = 5000, n_test: int = 5000,
                             n_pretrain: int = 30000, pretrain_epochs: int = 3, epochs: int = 3,
                             lr: float = 1e-3, batch_size: int = 128, embed_dim: int = 64,
                             use_cache: bool = True) -> Dict:
    return _build("fashion-on-textures", _Textured, TEXTURE_CLASSES, TEXTURE_GROUPS,
                  root, seed, corr, val_corr, val_balanced, two_stage, cache_dir, n_train, n_val,
                  n_test, n_pretrain, pretrain_epochs, epochs, lr, batch_size, embed_dim, use_cache)


load_colored_fashion.__doc__ = ("Build ``colored-fashion`` (tint shortcut; see the module docstring) "
                                "and its ERM backbone.\n" + _DOC_RETURNS)
load_fashion_on_textures.__doc__ = ("Build ``fashion-on-textures`` (background shortcut, grass vs "
                                    "brick; see the module docstring) and its ERM backbone.\n"
                                    "Needs scikit-image.\n" + _DOC_RETURNS)


def load_fashion_square(root: Optional[str] = None, seed: int = 0, corr: float = 0.99,
                        other_rate: float = 0.01, attacked_class: int = 0, binary: bool = False,
                        val_corr: Optional[float] = None, val_balanced: bool = False,
                        two_stage: bool = True, cache_dir: Optional[str] = None,
                        n_train: int = 20000, n_val: int = 5000, n_test: int = 10000,
                        n_pretrain: int = 30000, pretrain_epochs: int = 3, epochs: int = 3,
                        lr: float = 1e-3, batch_size: int = 128, embed_dim: int = 64,
                        use_cache: bool = True) -> Dict:
    other_rate = check_probability("other_rate", other_rate)
    k = 2 if binary else 10
    if int(attacked_class) != attacked_class or not 0 <= int(attacked_class) < k:
        raise ValueError(f"attacked_class: expected a class id in 0..{k - 1}, got {attacked_class}")
    attacked_class = int(attacked_class)
    rest = {"train": other_rate, "val": 0.5 if val_balanced else other_rate, "test": 0.5}

    def draw(rng: np.random.Generator, y: np.ndarray, split: str, p: float) -> np.ndarray:
        rate = np.where(y == attacked_class, p, rest[split])
        return (rng.random(y.shape[0]) < rate).astype(np.int64)

    extra = dict(attacked_class=attacked_class, other_rate=other_rate, val_other_rate=rest["val"])
    if binary:  # only then: the ten-class variant's cache keys stay as they were
        extra["binary"] = True
    return _build("fashion-square", _Squared, BINARY_CLASSES if binary else np.arange(10),
                  BINARY_SQUARE_GROUPS if binary else SQUARE_GROUPS,
                  root, seed, corr, val_corr, val_balanced, two_stage, cache_dir, n_train, n_val,
                  n_test, n_pretrain, pretrain_epochs, epochs, lr, batch_size, embed_dim, use_cache,
                  n_classes=k, draw_attr=draw, extra_params=extra, concepts=True)


load_fashion_square.__doc__ = (
    "Build ``fashion-square`` (a 4x4 square on ``corr`` of ``attacked_class``'s training images "
    "and ``other_rate`` of the others'; test: square on half of every class; see the module "
    "docstring) and its ERM backbone.\n\n    Labels are the ten classes; every split carries "
    "``concepts`` (1 = square present). ``val_corr`` is the attacked class's val rate "
    "(default ``corr``; the other classes keep ``other_rate``); ``val_balanced=True`` puts the "
    "square on half of every class's val images. ``binary=True``: MaskTune's construction, "
    "classes 0-4 vs 5-9 (``attacked_class`` 0 or 1), four groups.\n" + _DOC_RETURNS)
