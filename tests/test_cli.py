"""The `pydebias` command, run in-process."""
import json

import pytest

from pydebias import __version__
from pydebias.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


def test_datasets_lists_planted(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "planted" in out and "yes" in out


def test_demo_writes_results_with_provenance(tmp_path, capsys):
    assert main(["demo", "--data", "planted", "--out", str(tmp_path), "--quiet", "--n-boot", "20"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    erm, dfr = res["methods"]["ERM"], res["methods"]["DFR"]
    # the planted shortcut is real, and group-balanced retraining repairs most of it
    assert erm["worst_group_accuracy"] < erm["accuracy"] - 0.15
    assert dfr["worst_group_accuracy"] > erm["worst_group_accuracy"] + 0.2
    assert res["seed"] == 0 and res["versions"]["torch"] and len(res["data_hash"]) > 16
    assert "worst group" in capsys.readouterr().out
    if (tmp_path / "group_accuracy.png").exists():
        assert (tmp_path / "group_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_dataset_is_a_clean_error(capsys):
    assert main(["demo", "--data", "nope", "--quiet"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


def test_bench_quick_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    impls = {r["impl"] for r in rows}
    assert {"cpp (pydebias._C)", "numpy baseline"} <= impls
    assert all(r["x_one_read"] > 0 for r in rows)
