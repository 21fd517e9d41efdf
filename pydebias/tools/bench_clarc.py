"""RR-ClArC's training cost as a ratio to plain fine-tuning of the same layers on the same
data path, measured in one run: the closed form (the head's inputs computed once, no
second backward) and autograd (a forward pass and a double backward every step)."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch


def bench_clarc_epoch(n: int = 8192, epochs: int = 3, repeat: int = 3, seed: int = 0) -> List[Dict]:
    """Median epoch seconds of RR-ClArC (lam=1) and of plain fine-tuning (lam=0) for each
    path, on a random SmallCNN and random 28 x 28 images (speed does not depend on the
    weights), the two fits alternating ``repeat`` times so that drift hits both; ratios to
    the plain epoch of the same path and to plain fine-tuning with a forward every step."""
    from ..methods import RRClArC
    from ..models import SmallCNN

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    concepts = (torch.rand(n, generator=g) < 0.3).numpy()
    x[torch.from_numpy(concepts), :, :4, :4] = 1.0
    torch.manual_seed(seed)
    model = SmallCNN(n_classes=10, in_channels=1).eval()
    train = torch.utils.data.TensorDataset(x, y)
    rows = []
    for path, closed in (("forward every step", False), ("head inputs once", "auto")):
        times: Dict[float, List[float]] = {0.0: [], 1.0: []}
        flags = {}
        for _ in range(repeat):
            for lam in (0.0, 1.0):
                m = RRClArC(lam=lam, closed_form=closed, epochs=epochs, seed=seed)
                m.fit(model, train, concepts=concepts)
                times[lam] += [e["seconds"] for e in m.report_["losses"]]
                flags[lam] = m.report_["closed_form"]
        for lam in (0.0, 1.0):
            name = "plain fine-tune" if lam == 0 else "RR-ClArC, " + ("closed form" if closed else "autograd")
            rows.append({"kernel": "ClArC epoch", "impl": f"{name} ({path})" if lam == 0 else name, "n": n,
                         "seconds": float(np.median(times[lam])), "closed_form": flags[lam], "lam": lam,
                         "epochs_timed": len(times[lam])})
    user = rows[0]["seconds"]  # what one writes by hand: a forward through the frozen net every step
    for i, r in enumerate(rows):
        r["x_plain_epoch"] = r["seconds"] / rows[i - i % 2]["seconds"]  # vs plain on the same path
        r["speedup_vs_torch"] = user / r["seconds"]
        bar = " (bar <= 1.3x)" if r["closed_form"] and r["lam"] else ""
        r["bar"] = f"{r['x_plain_epoch']:.2f}x plain on its path{bar}"
    return rows
