"""pydebias.export: folding into plain layers, round trips through every format, atomic writes."""
import numpy as np
import pytest
import torch
from torch import nn

from pydebias.export import FORMATS, export, fold, load_exported
from pydebias.methods import PClArC
from pydebias.models import SmallCNN
from pydebias.nn import MaskedLinear


def _formats():
    out = []
    for f in FORMATS:
        needs = ("onnx", "onnxruntime", "onnxscript") if f == "onnx" else ()
        missing = [m for m in needs if not _importable(m)]
        out.append(pytest.param(f, marks=pytest.mark.skipif(bool(missing), reason=f"needs {missing}")))
    return out


def _importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def _masked_head(per_class=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(32, 5)
    shape = (5, 32) if per_class else (32,)
    return MaskedLinear.from_linear(lin, mask=(torch.rand(shape, generator=g) > 0.3).float())


@pytest.mark.parametrize("per_class", [False, True])
def test_fold_turns_masked_heads_into_plain_linears(per_class):
    head = _masked_head(per_class)
    plain = fold(head)
    assert type(plain) is nn.Linear and "mask" not in dict(plain.named_buffers())
    x = torch.randn(7, 32)
    torch.testing.assert_close(plain(x), head(x), rtol=0, atol=1e-6)
    # inside a model too: the MaskedLinear is replaced in place of the copy, the input is untouched
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), head)
    flat = fold(model)
    assert not any(isinstance(m, MaskedLinear) for m in flat.modules())
    assert isinstance(model[2], MaskedLinear)
    x = torch.randn(7, 16)
    torch.testing.assert_close(flat(x), model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", _formats())
def test_head_round_trip_at_any_batch_size(tmp_path, fmt):
    head = _masked_head(per_class=True)
    out = export(head, tmp_path / f"head.{fmt}", format=fmt)
    assert out["format"] == fmt and out["max_abs_diff"] <= 1e-5 and out["folded"]["masked_linear"] == 1
    run = load_exported(out["path"], fmt)
    for b in (1, 3, 64):  # the batch dimension stays free
        x = torch.randn(b, 32)
        torch.testing.assert_close(run(x), head(x).detach(), rtol=1e-5, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [f"head.{fmt}"]  # no temporary file left


@pytest.mark.parametrize("fmt", _formats())
def test_model_round_trip(tmp_path, fmt):
    torch.manual_seed(0)
    model = SmallCNN(n_classes=3, in_channels=1).eval()
    model.head = MaskedLinear.from_linear(model.head, mask=(torch.arange(model.head.in_features) % 4 > 0).float())
    x = torch.rand(6, 1, 28, 28)
    model.train()
    out = export(model, tmp_path / "model", format=fmt, example=x)
    assert model.training  # compared in eval mode, the caller's mode restored
    model.eval()
    run = load_exported(out["path"], fmt)
    x2 = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(run(x2), model(x2).detach(), rtol=1e-5, atol=1e-5)


def _square_model():
    torch.manual_seed(0)
    x = torch.rand(96, 1, 28, 28) * 0.5
    y = torch.arange(96) % 2
    c = (torch.arange(96) % 3 == 0).numpy()
    x[torch.from_numpy(c), :, :4, :4] = 1.0
    return SmallCNN(n_classes=2, in_channels=1).eval(), torch.utils.data.TensorDataset(x, y), c


@pytest.mark.parametrize("layer, pooling, folds", [("fc", "max", True), ("conv.4", "max", False)])
def test_pclarc_is_folded_where_exact_and_traced_elsewhere(tmp_path, layer, pooling, folds):
    model, train, c = _square_model()
    p = PClArC(layer=layer, pooling=pooling)
    hooked = p.fit(model, train, concepts=c)
    flat = fold(p)
    n_hooks = sum(len(m._forward_hooks) for m in flat.modules())
    assert n_hooks == (0 if folds else 1)
    x = train.tensors[0][:8]
    out = export(p, tmp_path / "pclarc.pt", example=x)
    assert out["folded"]["pclarc"]
    run = load_exported(out["path"], "torchscript")
    torch.testing.assert_close(run(x[:5]), hooked(x[:5]).detach(), rtol=1e-5, atol=1e-5)
    # the hooked model differs from the input model there: the projection really is in the file
    assert not torch.allclose(hooked(x).detach(), model(x).detach(), atol=1e-4)


def test_pclarc_over_a_masked_head_folds_mask_first(tmp_path):
    model, train, c = _square_model()
    p = PClArC()
    hooked = p.fit(model, train, concepts=c)
    hooked.head = MaskedLinear.from_linear(hooked.head, mask=(torch.arange(2 * 64).reshape(2, 64) % 3 > 0).float())
    flat = fold(p)
    assert type(flat.head) is nn.Linear and not any(len(m._forward_hooks) for m in flat.modules())
    x = train.tensors[0][:16]
    torch.testing.assert_close(flat(x), hooked(x).detach(), rtol=1e-4, atol=1e-5)


class _BatchDependent(nn.Module):
    """Traced at one batch size, wrong at another: the check must catch it."""

    def forward(self, x):
        return x * 2 if x.shape[0] > 4 else -x


def test_a_file_that_disagrees_is_never_written(tmp_path):
    target = tmp_path / "bad.pt"
    target.write_bytes(b"old")  # an earlier export stays as it was
    with pytest.raises(ValueError, match="nothing was written"):
        export(_BatchDependent(), target, example=torch.randn(8, 3))
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_bad_arguments_name_themselves(tmp_path):
    head = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="format"):
        export(head, tmp_path / "h", format="tflite")
    with pytest.raises(ValueError, match="example"):
        export(SmallCNN(n_classes=2, in_channels=1), tmp_path / "m")
    with pytest.raises(ValueError, match="example"):
        export(head, tmp_path / "h", example=torch.randn(1, 4))
    with pytest.raises(TypeError, match="module"):
        fold(np.zeros(3))
    with pytest.raises(RuntimeError, match="fit"):
        fold(PClArC())


def test_top_level_name_and_command_line(tmp_path, capsys):
    import json

    import pydebias
    from pydebias.tools.cli import main

    head = _masked_head()
    assert pydebias.export is export
    torch.save(head.fold().state_dict(), tmp_path / "head_state.pt")
    assert main(["export", str(tmp_path / "head_state.pt"), str(tmp_path / "head.pt")]) == 0
    x = torch.randn(5, 32)
    torch.testing.assert_close(load_exported(tmp_path / "head.pt", "torchscript")(x), head(x).detach(),
                               rtol=1e-5, atol=1e-5)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    torch.save(model, tmp_path / "model_full.pt")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "model_full.pt"), str(tmp_path / "m.pt2"), "--format", "export",
                 "--example-shape", "4,1,28,28"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "export"
    xi = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(load_exported(tmp_path / "m.pt2", "export")(xi), model(xi).detach(), rtol=1e-5,
                               atol=1e-5)
    torch.save(head.state_dict(), tmp_path / "masked_state.pt")  # a MaskedLinear's: the mask is applied
    assert main(["export", str(tmp_path / "masked_state.pt"), str(tmp_path / "masked.pt")]) == 0
    torch.testing.assert_close(load_exported(tmp_path / "masked.pt", "torchscript")(x), head(x).detach(),
                               rtol=1e-5, atol=1e-5)
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert "source" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "model_full.pt"), str(tmp_path / "x.pt"), "--example-shape", "4x1"]) == 2
    assert "--example-shape" in capsys.readouterr().err
