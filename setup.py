"""Build of the native extension pydebias._C (pybind11 + OpenMP, no torch link)."""
import os
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

extra_compile = ["-O3", "-fopenmp", "-std=c++17"]
extra_link = ["-fopenmp"]
if sys.platform == "darwin":  # Apple clang takes OpenMP only through -Xpreprocessor
    extra_compile = ["-O3", "-Xpreprocessor", "-fopenmp", "-std=c++17"]
    extra_link = ["-lomp"]
if os.environ.get("PYDEBIAS_NATIVE_ARCH") == "1":  # opt-in: the wheel must run on any x86-64
    extra_compile.append("-march=native")
if os.environ.get("PYDEBIAS_NO_AVX512_BUILD") == "1":  # bench/test build: AVX2 at most, as on a CPU without AVX-512
    extra_compile.append("-DPYDEBIAS_NO_AVX512_BUILD")
if os.environ.get("PYDEBIAS_SANITIZE") == "1":  # the test suite's ASan + UBSan build (tests/test_sanitizers.py)
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    extra_compile = [f for f in extra_compile if f != "-O3"] + ["-O1", "-g"] + sanitize
    extra_link = extra_link + sanitize

# one compiler per core over the .cpp files (PYDEBIAS_BUILD_JOBS=N to cap): 31 s -> 23 s on 2 cores
ParallelCompile("PYDEBIAS_BUILD_JOBS").install()

ext = Pybind11Extension(
    "pydebias._C",
    sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
    include_dirs=["csrc"],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
