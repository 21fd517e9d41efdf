"""Killed mid-way (SIGKILL, nothing can clean up), then run again: the results equal an
uninterrupted run's, and no file under its final name is ever half written. The kill
times sweep the whole run: before, during and after the writes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from test_fashion import FAST, _fake_fashion

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))


def _start(code: str, env=None):
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env or dict(os.environ), start_new_session=True)


def _run_killed_at(code: str, fractions, full_seconds: float, env=None):
    """Start ``code`` once per fraction and SIGKILL it at that fraction of a full run."""
    for f in fractions:
        p = _start(code, env)
        try:
            p.wait(timeout=max(0.05, f * full_seconds))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _final_files(directory):
    """Files under their final names (the atomic writer's temporaries start with .tmp-)."""
    out = []
    for d, _, files in os.walk(directory):
        out += [os.path.join(d, f) for f in files if not f.startswith(".tmp-")]
    return out


def _check_complete(path: str):
    if path.endswith(".json"):
        json.load(open(path))
    elif path.endswith(".png"):
        assert open(path, "rb").read()[-8:] == b"IEND\xaeB`\x82"  # a PNG's last chunk
    elif path.endswith(".pt"):
        torch.load(path, map_location="cpu", weights_only=True)
    elif path.endswith(".md"):
        assert open(path).read().rstrip().endswith(".")  # the footer's last sentence


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if "seconds" not in k and k != "versions"}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


@pytest.mark.slow
@pytest.mark.parametrize("command", [["demo", "--data", "planted"], ["report", "--benchmarks", "planted", "--seed", "0"]])
def test_cli_killed_then_rerun_equals_an_uninterrupted_run(tmp_path, command):
    out_clean, out_killed = tmp_path / "clean", tmp_path / "killed"
    code = "import sys; from pydebias.tools.cli import main; sys.exit(main(sys.argv[1:]))"
    args = command + ["--quiet", "--n-boot", "20"]
    t0 = time.perf_counter()
    clean = subprocess.run([sys.executable, "-c", code, *args, "--out", str(out_clean)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    full = time.perf_counter() - t0
    assert clean.returncode == 0, clean.stderr[-2000:]
    kill_code = code.replace("sys.argv[1:]", repr(args + ["--out", str(out_killed)]))
    _run_killed_at(kill_code, (0.3, 0.6, 0.8, 0.9, 0.97), full)
    for f in _final_files(out_killed):
        _check_complete(f)
    again = subprocess.run([sys.executable, "-c", kill_code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    name = "results.json" if command[0] == "demo" else "report.json"
    a, b = (json.load(open(d / name)) for d in (out_clean, out_killed))
    assert _strip_times(a) == _strip_times(b)
    if name == "report.json":  # the worst-group table, above the timing table
        head = lambda d: open(d / "report.md").read().split("Mean test accuracy")[0]  # noqa: E731
        assert head(out_clean) == head(out_killed)


@pytest.mark.slow
def test_backbone_training_killed_then_rerun_equals_an_uninterrupted_build(tmp_path):
    """The long fit of the built-ins: a CNN trained on the CPU and cached. Killed while
    training or writing, the cache holds no partial file and the next build equals one
    that was never interrupted, byte for byte."""
    root = _fake_fashion(tmp_path / "fashion")
    code = ("import numpy as np, sys\n"
            "from pydebias.data.fashion import load_colored_fashion\n"
            f"d = load_colored_fashion(root={root!r}, seed=2, cache_dir=sys.argv[1], **{FAST!r})\n"
            "np.save(sys.argv[2], d['train'].features)\n")
    t0 = time.perf_counter()
    clean = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c1"), str(tmp_path / "clean.npy")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    full = time.perf_counter() - t0
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed_code = code.replace("sys.argv[1]", repr(str(tmp_path / "c2"))).replace(
        "sys.argv[2]", repr(str(tmp_path / "killed.npy")))
    _run_killed_at(killed_code, (0.4, 0.7, 0.9), full)
    for f in _final_files(tmp_path / "c2"):
        _check_complete(f)
    again = subprocess.run([sys.executable, "-c", killed_code], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert np.load(tmp_path / "clean.npy").tobytes() == np.load(tmp_path / "killed.npy").tobytes()
