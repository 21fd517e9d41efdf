"""The C++ kernels under AddressSanitizer and UndefinedBehaviorSanitizer: the extension
is rebuilt with ``PYDEBIAS_SANITIZE=1`` (setup.py) and the kernel tests run against it,
the hypothesis properties and the 16-thread stress included. Any report fails the test:
UBSan is built not to recover, ASan stops at the first error."""
import glob
import hashlib
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
TESTS = ["tests/test_properties.py", "tests/test_native_stress.py", "tests/test_grouped_moments.py",
         "tests/test_grouped_quantiles.py", "tests/test_widen.py", "tests/test_reliability.py",
         "tests/test_distributed.py::test_radix_kernels_match_numpy"]
BUDGET_S = 180  # the build and the run together (CI's bar)


def _runtime(name: str):
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def _build(cache: str) -> str:
    """The sanitizer build of pydebias._C, cached by the hash of the C++ sources."""
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(ROOT, "csrc", "*")) + [os.path.join(ROOT, "setup.py")]):
        h.update(open(f, "rb").read())
    out = os.path.join(cache, f"sanitize-{h.hexdigest()[:16]}")
    found = glob.glob(os.path.join(out, "lib", "pydebias", "_C*.so"))
    if found:
        return found[0]
    env = dict(os.environ, PYDEBIAS_SANITIZE="1")
    res = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-j", "2", "--build-lib",
                          os.path.join(out, "lib"), "--build-temp", os.path.join(out, "tmp")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUDGET_S)
    assert res.returncode == 0, res.stderr[-3000:]
    return glob.glob(os.path.join(out, "lib", "pydebias", "_C*.so"))[0]


@pytest.mark.slow
def test_kernels_under_asan_and_ubsan(tmp_path):
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if not (sys.platform.startswith("linux") and asan and ubsan):
        pytest.skip("needs gcc's ASan and UBSan runtimes (Linux)")
    t0 = time.perf_counter()
    so = _build(os.environ["PYDEBIAS_CACHE"])
    logs = tmp_path / "sanitizer"  # reports go to files: pytest's capture would swallow them
    env = dict(os.environ, PYDEBIAS_TEST_NATIVE=so, LD_PRELOAD=f"{asan}:{ubsan}",
               ASAN_OPTIONS=f"detect_leaks=0:halt_on_error=1:exitcode=97:log_path={logs}",
               UBSAN_OPTIONS=f"halt_on_error=1:print_stacktrace=1:exitcode=98:log_path={logs}")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *TESTS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUDGET_S)
    reports = "".join(open(f).read()[:6000] for f in glob.glob(f"{logs}*"))
    assert reports == "", reports
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert " passed" in res.stdout
    # the native module really was the sanitizer build
    probe = subprocess.run([sys.executable, "-c", "import conftest, pydebias.backends as b; print(b.native().__file__)"],
                           cwd=os.path.join(ROOT, "tests"), env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == so, probe.stderr[-2000:]
    print(f"\nsanitizer build + run: {time.perf_counter() - t0:.0f} s")
