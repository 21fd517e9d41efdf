"""Regression tests for the bad-input probe's findings, most severe first: a wrong
variance, a process abort, unbounded allocations, lost results, silent nonsense and raw
tracebacks. Each test fails on the code before its fix."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import pydebias
from pydebias import EmbeddingSet, evaluate, neuron_stats
from pydebias.data import planted
from pydebias.methods import AFR, DFR, ERM, JTT, ClassBalanced, NeuronTune
from pydebias.sketch import QuantileSketch

from conftest import needs_triton

BACKENDS = ["cpp", "torch", pytest.param("triton", marks=needs_triton)]


# -- 1. wrong results, silently ------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_variance_of_a_group_far_from_row_0(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4))
    y = np.repeat([0, 1], 150)
    x[y == 1] += 1e8  # row 0 is in class 0: a shift shared by all groups cancels for class 1
    s = neuron_stats(torch.from_numpy(x) if backend == "triton" else x, y, backend=backend, quantiles=())
    for c in (0, 1):
        np.testing.assert_allclose(s.var[c], x[y == c].var(0, ddof=1), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_first_row_of_1e8_leaves_the_other_class_right(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    x[0] = 1e8
    y = np.repeat([0, 1], 150)
    s = neuron_stats(torch.from_numpy(x) if backend == "triton" else x, y, backend=backend, quantiles=())
    np.testing.assert_allclose(s.var[1], x[y == 1].astype(np.float64).var(0, ddof=1), rtol=1e-6)


def test_fused_moments_and_medians_pass_uses_per_group_shifts():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 40)).astype(np.float32)
    y = np.repeat([0, 1], 2000)
    x[y == 1] += 3e4  # float32 keeps ~3 decimals here: enough for the moments to be exact-ish
    s = neuron_stats(x, y, backend="cpp")  # in memory, C-contiguous: the fused pass
    ref = x[y == 1].astype(np.float64)
    np.testing.assert_allclose(s.var[1], ref.var(0, ddof=1), rtol=1e-6)
    np.testing.assert_array_equal(s.median[1], np.quantile(ref, 0.5, axis=0, method="lower"))


# -- 2. process abort ----------------------------------------------------------------------
def _in_subprocess(code: str):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("case", ["scaled", "nan_init", "nan_rows", "nan_centroids"])
def test_faiss_inputs_raise_instead_of_aborting(case):
    out = _in_subprocess(f"""
        import numpy as np
        from pydebias import cluster
        x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
        case = {case!r}
        try:
            if case == "scaled":
                cluster.kmeans(x * np.float32(1e19), 4, n_iter=2)
            elif case == "nan_init":
                cluster.kmeans(x, 4, n_iter=2, init=np.full((4, 8), np.nan, np.float32))
            elif case == "nan_rows":
                x[7] = np.nan
                cluster.nearest_centroid(x, x[:3])
            else:
                cluster.nearest_centroid(x, np.full((2, 8), np.nan, np.float32))
        except ValueError as e:
            print("ValueError:", e)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ValueError: ")
    assert out.stdout.split(": ")[1] in {"x", "init", "centroids"}


# -- 3. unbounded allocations ---------------------------------------------------------------
def test_huge_n_groups_is_refused_before_allocating():
    x = np.zeros((300, 4), np.float32)
    g = np.zeros(300, np.int64)
    with pytest.raises(ValueError, match=r"^n_groups: 1000000000 groups would need"):
        neuron_stats(x, groups=g, n_groups=10**9)
    with pytest.raises(ValueError, match=r"^n_groups: 1000000000 groups"):
        pydebias.grouped_quantiles(x, g, n_groups=10**9)


def test_a_sparse_label_id_is_refused_by_the_set():
    x = np.zeros((300, 4), np.float32)
    y = np.zeros(300, np.int64)
    y[0] = 10**12
    with pytest.raises(ValueError, match=r"^labels: 1000000000001 classes would need"):
        EmbeddingSet(x, y)


# -- 4. results lost -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["file", "readonly"])
def test_cli_checks_the_output_directory_before_the_job(tmp_path, bad, capsys):
    from pydebias.tools.cli import main

    target = tmp_path / "out"
    if bad == "file":
        target.write_text("not a directory")
    else:
        target.mkdir()
        target.chmod(0o500)
        if os.access(target, os.W_OK):  # root ignores the mode bits
            pytest.skip("running as root: a read-only directory is still writable")
    assert main(["run", "erm", "--data", "planted", "--out", str(target), "--quiet"]) == 2
    err = capsys.readouterr()
    assert "--out: cannot write results to" in err.err and "methods on" not in err.err  # before the job


def test_extraction_cache_is_keyed_by_inputs_and_weights(tmp_path):
    from pydebias.data import extract_embeddings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    a, b = torch.randn(40, 5), torch.randn(40, 5)
    path = str(tmp_path / "e.npy")
    first = np.array(extract_embeddings(model, a, "1", out=path, progress=False))
    np.testing.assert_array_equal(extract_embeddings(model, a, "1", out=path, progress=False), first)
    with pytest.raises(ValueError, match=r"^out: .* exists with other settings \(inputs"):
        extract_embeddings(model, b, "1", out=path, progress=False)  # other inputs, same shape and layer
    other = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"^out: .* exists with other settings \(model"):
        extract_embeddings(other, a, "1", out=path, progress=False)


def test_a_truncated_extraction_file_is_named(tmp_path):
    from pydebias.data import extract_embeddings

    model = nn.Sequential(nn.Linear(5, 3))
    x = torch.randn(10, 5)
    path = tmp_path / "e.npy"
    extract_embeddings(model, x, "0", out=str(path), progress=False)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"^out: .*is damaged"):
        extract_embeddings(model, x, "0", out=str(path), progress=False)


# -- 5. silent nonsense ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    d = planted(n_train=600, n_val=400, n_test=200, seed=0)
    return d, ERM().fit(d["train"])


@pytest.mark.parametrize("make, arg", [
    (lambda: ERM(l2=float("nan")), "l2"), (lambda: ERM(epochs=0), "epochs"), (lambda: ERM(epochs=-1), "epochs"),
    (lambda: JTT(up_weight=float("nan")), "up_weight"), (lambda: JTT(up_weight=float("inf")), "up_weight"),
    (lambda: AFR(gamma=float("nan")), "gamma"),
    (lambda: NeuronTune(holdout=-0.2), "holdout"), (lambda: NeuronTune(holdout=float("nan")), "holdout"),
    (lambda: NeuronTune(holdout=1.5), "holdout"), (lambda: NeuronTune(lam=float("nan")), "lam"),
    (lambda: NeuronTune(guard_tolerance=-1), "guard_tolerance"), (lambda: NeuronTune(lam_margin=-5), "lam_margin"),
])
def test_bad_hyper_parameters_are_named(small, make, arg):
    d, erm = small
    with pytest.raises((ValueError, TypeError), match=rf"^{arg}: "):
        make().fit(d["train"], d["val"], head=erm)


@pytest.mark.parametrize("method", [ERM, DFR, AFR])
def test_huge_finite_features_do_not_return_a_non_finite_head(method):
    rng = np.random.default_rng(0)
    x = (rng.uniform(-1, 1, (200, 4)) * 3e38).astype(np.float32)  # finite, near float32's limit
    y, g = rng.integers(0, 2, 200), rng.integers(0, 4, 200)
    s = EmbeddingSet(x, y, groups=g)
    with pytest.raises(ValueError, match=r"^features: values up to"):
        method().fit(s, s)


def test_a_one_logit_head_is_refused(small):
    d, _ = small
    one = nn.Linear(64, 1)
    with pytest.raises(ValueError, match=r"^head_or_model: gives 1 logits for 2 classes"):
        evaluate(one, d["test"])
    with pytest.raises(ValueError, match=r"^head: has 1 outputs"):
        NeuronTune().fit(d["train"], d["val"], head=one)


@pytest.mark.parametrize("width", [3, 63])
def test_classbalanced_refuses_a_head_of_the_wrong_width(small, width):
    d, _ = small
    with pytest.raises(ValueError, match=r"^head: takes"):
        ClassBalanced().fit(d["train"], d["val"], head=nn.Linear(width, 2))


@pytest.mark.parametrize("fn", ["neuron_stats", "grouped_quantiles", "class_means", "sketch"])
def test_negative_chunk_rows_is_refused(fn):
    x = np.ones((10, 3), np.float32)
    y = np.zeros(10, np.int64)
    call = {"neuron_stats": lambda: neuron_stats(x, y, chunk_rows=-1),
            "grouped_quantiles": lambda: pydebias.grouped_quantiles(x, y, chunk_rows=-1),
            "class_means": lambda: pydebias.cluster.class_means(x, y, chunk_rows=-1),
            "sketch": lambda: QuantileSketch(3).update(x, chunk_rows=-1)}[fn]
    with pytest.raises(ValueError, match=r"^chunk_rows: expected >= 1"):
        call()


def test_float_predictions_are_not_truncated(small):
    d, _ = small
    with pytest.raises(TypeError, match=r"^head_or_model \(predictions\): expected integer ids"):
        evaluate(np.full(len(d["test"]), 0.7), d["test"])


def test_civilcomments_unbalanced_quote_and_bad_toxicity_are_named(tmp_path):
    from pydebias.data import load_civilcomments

    cols = ["comment_text", "split", "toxicity", "male", "female", "LGBTQ", "christian", "muslim",
            "other_religions", "black", "white"]
    header = ",".join(cols)
    row = lambda text, tox: f"{text},train,{tox}," + ",".join(["0"] * 8)  # noqa: E731
    (tmp_path / "all_data_with_identities.csv").write_text(
        "\n".join([header, row('"unbalanced quote', 0.1), row("fine", 0.9), row("fine too", 0.2)]) + "\n")
    with pytest.raises(ValueError, match=r"all_data_with_identities.csv: line \d+: .*unbalanced quote"):
        load_civilcomments(tmp_path)
    for tox in (-5, 7):
        (tmp_path / "all_data_with_identities.csv").write_text("\n".join([header, row("a", 0.1), row("b", tox)]))
        with pytest.raises(ValueError, match=rf"^toxicity: data row 1 of .* holds {float(tox)}"):
            load_civilcomments(tmp_path)


def test_celeba_duplicated_file_name_is_named(tmp_path):
    from pydebias.data import load_celeba

    (tmp_path / "list_attr_celeba.txt").write_text("2\nBlond_Hair Male\n1.jpg 1 -1\n1.jpg -1 1\n")
    (tmp_path / "list_eval_partition.txt").write_text("1.jpg 0\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt: data row 1 lists '1.jpg' a second time"):
        load_celeba(tmp_path)
    (tmp_path / "list_attr_celeba.txt").write_text("1\nBlond_Hair Male\n1.jpg 1 -1\n")
    (tmp_path / "list_eval_partition.txt").write_text("1.jpg 0\n1.jpg 2\n")
    with pytest.raises(ValueError, match=r"list_eval_partition.txt: line 2 lists '1.jpg' a second time"):
        load_celeba(tmp_path)


# -- 6. messages, not tracebacks --------------------------------------------------------------
@pytest.mark.parametrize("param, message", [
    ("n_train=abc", "n_train: expected an integer"), ("n_train=2.5", "n_train: expected an integer"),
    ("bogus=1", "bogus: not a parameter of planted"),
])
def test_cli_param_errors_are_messages(tmp_path, capsys, param, message):
    from pydebias.tools.cli import main

    assert main(["run", "erm", "--data", "planted", "--param", param, "--out", str(tmp_path), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_cli_negative_n_boot_is_refused(tmp_path, capsys):
    from pydebias.tools.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "erm", "--data", "planted", "--n-boot", "-5", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--n-boot: expected 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("holdout, n_val", [(0.001, 400), (0.2, 5)])
def test_neurontune_tiny_holdout_is_named(holdout, n_val):
    d = planted(n_train=300, n_val=n_val, n_test=10, seed=0)
    with pytest.raises(ValueError, match=r"^holdout: "):
        NeuronTune(holdout=holdout).fit(d["train"], d["val"])


@pytest.mark.parametrize("head, match", [
    (nn.Linear(7, 2), r"^head: takes 7 features"), (nn.Linear(64, 1), r"^head: has 1 outputs"),
    (nn.Linear(64, 3), r"^head: has 3 outputs, val has 2 classes"),
])
def test_afr_head_errors_are_named(small, head, match):
    d, _ = small
    with pytest.raises(ValueError, match=match):
        AFR().fit(d["train"], d["val"], head=head)


def test_afr_takes_a_float64_head(small):
    d, erm = small
    h64 = nn.Linear(64, 2).double()
    with torch.no_grad():
        h64.weight.copy_(erm.weight.double())
        h64.bias.copy_(erm.bias.double())
    out = AFR().fit(d["train"], d["val"], head=h64)
    ref = AFR().fit(d["train"], d["val"], head=erm)
    assert out.weight.dtype == torch.float32 and torch.isfinite(out.weight).all()
    torch.testing.assert_close(out.weight, ref.weight, rtol=0.02, atol=2e-3)  # the float64 logits round apart


@pytest.mark.parametrize("call", [
    lambda x: neuron_stats(x, torch.zeros(4, dtype=torch.long)),
    lambda x: EmbeddingSet(x, torch.zeros(4, dtype=torch.long)),
    lambda x: pydebias.cluster.class_means(x, torch.zeros(4, dtype=torch.long)),
    lambda x: pydebias.grouped_quantiles(x, torch.zeros(4, dtype=torch.long)),
])
def test_meta_tensors_are_refused_at_the_boundary(call):
    x = torch.empty(4, 3, device="meta")
    with pytest.raises(ValueError, match=r"^(features|x): a tensor on the meta device"):
        call(x)


def test_non_utf8_and_huge_csv_fields(tmp_path):
    from pydebias.data import load_waterbirds

    meta = tmp_path / "metadata.csv"
    meta.write_bytes(b"img_id,img_filename,y,split,place\n1,caf\xe9.jpg,0,0,0\n")
    with pytest.raises(ValueError, match=r"metadata.csv: not UTF-8 text"):
        load_waterbirds(tmp_path)
    long_name = "a" * 200_000 + ".jpg"
    meta.write_text(f"img_id,img_filename,y,split,place\n1,{long_name},0,0,0\n2,b.jpg,1,0,1\n")
    ds = load_waterbirds(tmp_path)
    assert ds["train"].paths_or_texts[0].endswith(long_name)


def test_the_cap_refuses_sparse_ids_not_many_real_classes():
    """1,000 real classes of 4,096-d features on 1,000 rows (an ImageNet-like evaluation
    set) pass, and so does a 5-row subset of them: the cap is for sparse ids."""
    x = np.zeros((1000, 4096), np.float32)
    s = EmbeddingSet(x, np.arange(1000), n_classes=1000)
    small = s.subset(np.arange(5))
    assert small.n_classes == 1000 and len(small) == 5 and small.labels.tolist() == [0, 1, 2, 3, 4]
    assert s.labels is not small.labels and len(s) == 1000  # the parent is untouched
