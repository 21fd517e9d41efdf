"""Result files: atomic writes and the provenance every result JSON records."""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from typing import Any, Dict, Iterable, Mapping, Optional


def versions() -> Dict[str, Optional[str]]:
    import numpy
    import torch

    from ._version import __version__

    out = {"pydebias": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform(),
           # the instruction set torch's CPU kernels dispatch to: backbones trained on the CPU
           # are byte-identical for the same seed on one machine, but not across instruction
           # sets (summation order differs), so a result names the one it came from
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for mod in ("faiss", "triton"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional dependency absent or broken: record that
            out[mod] = None
    return out


def provenance(seed: int, backend: str, data_hash: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
    return {"versions": versions(), "seed": seed, "backend": backend, "data_hash": data_hash, **extra}


def data_hash(data: Mapping) -> str:
    """The hash a result records for a dataset dict: its splits' fingerprints
    (:meth:`EmbeddingSet.fingerprint`), ``train:val:test``."""
    return ":".join(data[s].fingerprint() for s in ("train", "val", "test") if s in data)


def rows_data_hash(rows: Iterable[Mapping]) -> Optional[str]:
    """One hash over the ``data_hash`` of every row that has one (a file holding results on
    several datasets), in row order; None when no row has one."""
    import hashlib

    hashes = [r["data_hash"] for r in rows if r.get("data_hash")]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16] if hashes else None


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy values as Python ones and non-finite floats spelled out
    (NaN -> null, +-inf -> "inf" / "-inf"), so the JSON is strict."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if obj != obj else repr(obj)
    return obj


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented strict JSON (:func:`jsonable`), written atomically."""
    write_atomic(path, (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode())
