"""What every method shares (scikit-learn style): hyper-parameters in the constructor,
``fit`` learns and returns a model, learned state ends in an underscore, every fit
records ``report_``, and a result never aliases an input.

Two families, one call shape each:

- :class:`EmbeddingMethod` works on fixed embeddings:
  ``fit(train, val=None, *, head=None) -> torch.nn.Linear``, so one loop over
  :data:`pydebias.methods.REGISTRY` runs them all.
- :class:`ModelMethod` fine-tunes a whole network:
  ``fit(model, train, ...) -> torch.nn.Module``, ``train`` a
  ``torch.utils.data.Dataset`` of ``(x, y)``.
"""
from __future__ import annotations

import copy
import inspect
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..validation import check_embedding_set


class Method:
    """Base class: ``get_params`` mirrors the constructor (scikit-learn style)."""

    def get_params(self) -> Dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class EmbeddingMethod(Method):
    """A method on embeddings: ``fit(train, val=None, *, head=None) -> nn.Linear``.

    ``train`` is the split the ERM head was trained on, ``val`` the held-out split a
    method identifies or retrains on, ``head`` the ERM head to debias (trained by
    ``ERM(seed=self.seed)`` on ``train`` when a method needs one and none is given).
    Each subclass says which of them it reads in its docstring.
    """

    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        raise NotImplementedError

    # -- helpers for subclasses --------------------------------------------------
    @staticmethod
    def _need_val(val, method: str, need_groups: bool = False, process_group=None):
        """``val``, checked; across processes an error of one rank's ``val`` is raised on every rank."""
        def check():
            if val is None:
                raise ValueError(f"val: {method} reads a held-out split; pass fit(train, val)")
            return check_embedding_set(val, "val", need_groups=need_groups)

        if process_group is None:
            return check()
        from ..distributed import check_group, checked

        check_group(process_group)
        return checked(process_group, check)


class ModelMethod(Method):
    """A method on whole networks: ``fit(model, train, ...) -> nn.Module``.

    ``model`` follows :class:`pydebias.models.EncoderHead` or names its layers with
    ``layer=``; ``train`` is a ``torch.utils.data.Dataset`` of ``(x, y)`` pairs (a
    ``TensorDataset`` works). The returned model is a new object; ``model`` is untouched.
    """

    def fit(self, model: nn.Module, train, **kwargs) -> nn.Module:
        raise NotImplementedError

    def _check_fine_tuning(self, min_batch: int = 1) -> None:
        """Validate the fine-tuning hyper-parameters the model-level methods share:
        ``epochs``, ``optimizer``, ``lr``, ``batch_size``, ``seed`` and ``frozen`` (if any)."""
        from ..validation import check_choice, check_number

        check_number(self.epochs, "epochs", 1, integer=True)
        check_choice(self.optimizer, "optimizer", ("adam", "sgd"))
        check_number(self.lr, "lr", 0.0, low_open=True)
        check_number(self.batch_size, "batch_size", min_batch, integer=True)
        check_number(self.seed, "seed", integer=True)
        frozen = getattr(self, "frozen", ())
        if isinstance(frozen, str):
            raise TypeError(f"frozen: expected a sequence of module names, got the string {frozen!r}; "
                            f"write frozen=({frozen!r},)")

    @staticmethod
    def _check_model(model, name: str = "model") -> nn.Module:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name}: expected a torch.nn.Module, got {type(model).__name__}")
        return model

    @staticmethod
    def _check_dataset(train, name: str = "train") -> torch.utils.data.Dataset:
        if not isinstance(train, torch.utils.data.Dataset):
            raise TypeError(f"{name}: expected a torch.utils.data.Dataset of (x, y), got {type(train).__name__}")
        try:
            n = len(train)
        except TypeError as e:
            raise TypeError(f"{name}: expected a map-style Dataset with a length") from e
        if n == 0:
            raise ValueError(f"{name}: the dataset is empty")
        item = train[0]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(f"{name}: items must be (x, y) pairs, got {type(item).__name__}")
        return train


def data_loader(train, batch_size: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    """A loader over ``train`` whose shuffling is seeded by ``seed`` (same order every run)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=shuffle, generator=gen)


def dataset_labels(train, batch_size: int = 256) -> torch.Tensor:
    """(N,) int64 labels of a dataset of ``(x, y, ...)`` items (a ``TensorDataset``'s
    without a pass over the data)."""
    tensors = getattr(train, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return torch.as_tensor(tensors[1]).long()
    return torch.cat([torch.as_tensor(b[1]).long() for b in data_loader(train, batch_size, False, 0)])


def dataset_tensors(data, batch_size: int = 512):
    """``(x, y)`` tensors of a dataset of ``(x, y, ...)`` items (a ``TensorDataset``'s own
    tensors, no copy)."""
    tensors = getattr(data, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return tensors[0], torch.as_tensor(tensors[1]).long()
    xs, ys = zip(*((torch.as_tensor(b[0]), torch.as_tensor(b[1]).long())
                   for b in data_loader(data, batch_size, False, 0)))
    return torch.cat(xs), torch.cat(ys)


def model_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 512,
                  fn: Optional[Callable] = None) -> torch.Tensor:
    """``model``'s outputs (or ``fn``'s, e.g. ``model.embed``) for the rows of ``x``, in
    batches, without grad, in eval mode (its mode is restored)."""
    fn = model if fn is None else fn
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([fn(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def train_epochs(model: nn.Module, data, loss_fn: Callable, epochs: int, optimizer: str, lr: float,
                 batch_size: int, frozen: Sequence[str] = (), seed: int = 0, progress: bool = False,
                 desc: str = "fine-tune", loss_name: str = "loss") -> List[Dict]:
    """Fine-tune ``model`` in place for ``epochs`` over ``data`` (a dataset of tuples whose
    second item is the label): ``loss_fn(model, batch) -> (loss, logits)`` per batch,
    ``optimizer`` ``"adam"`` or ``"sgd"`` (momentum 0.9); the modules named in ``frozen``
    keep their parameters and stay in eval mode. Epoch ``e`` shuffles with ``seed + e``.
    Returns one ``{epoch, <loss_name>, train_accuracy, seconds}`` per epoch; ``model`` is
    left in eval mode and every ``requires_grad`` flag as it was."""
    from tqdm import tqdm

    from ..models.protocol import find_layer

    fixed_modules = [find_layer(model, n) for n in frozen]
    fixed = {id(p) for m in fixed_modules for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in fixed]
    was = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) not in fixed)
    opt = (torch.optim.Adam(params, lr=lr) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr, momentum=0.9))
    log = []
    try:
        for epoch in range(epochs):
            model.train()
            for m in fixed_modules:
                m.eval()
            t0, tot, ok, n = time.perf_counter(), 0.0, 0, 0
            for batch in tqdm(data_loader(data, batch_size, True, seed + epoch), desc=f"{desc} epoch {epoch}",
                              disable=not progress, leave=False):
                loss, out = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                yb = batch[1]
                tot += float(loss.detach()) * len(yb)
                ok += int((out.detach().argmax(1) == yb).sum())
                n += len(yb)
            log.append({"epoch": epoch, loss_name: tot / n, "train_accuracy": ok / n,
                        "seconds": time.perf_counter() - t0})
    finally:
        for p, flag in was:
            p.requires_grad_(flag)
        model.eval()
    return log


def copy_head(head: nn.Module) -> nn.Module:
    """An independent copy, so that a result never aliases the caller's model."""
    return copy.deepcopy(head)
