"""The house rules: core and tooling layers, no import cycles, no shadowing from the
checkout, short docstrings, a README for users, no references outside the repository."""
import ast
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
PKG_DIRS = {"pydebias": os.path.join(ROOT, "pydebias"), "pydebias.kernels": os.path.join(ROOT, "kernels", "triton")}
TOOLING = "pydebias.tools"


def _modules():
    """{module name: path} for every .py file of the package (kernels/triton/ is pydebias.kernels)."""
    out = {}
    for prefix, base in PKG_DIRS.items():
        for d, dirs, files in os.walk(base):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            rel = os.path.relpath(d, base)
            parts = [prefix] + ([] if rel == "." else rel.split(os.sep))
            for f in files:
                if f.endswith(".py"):
                    name = ".".join(parts + ([] if f == "__init__.py" else [f[:-3]]))
                    out[name] = os.path.join(d, f)
    return out


def _is_package(path: str) -> bool:
    return os.path.basename(path) == "__init__.py"


def _edges(mods):
    """module -> set of package modules it imports (at any depth: top level or in functions)."""
    edges = {}
    for name, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        pkg = name if _is_package(path) else name.rpartition(".")[0]
        out = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
                targets = subs if subs and len(subs) == len(node.names) else [mod] + subs
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rpartition(".")[0]
                if t in mods and t != name:
                    out.add(t)
        edges[name] = out
    return edges


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return comps


def _without_package_inits(edges, mods):
    """Drop the edges from a package's ``__init__`` to its own submodules: re-exports,
    not dependencies (a submodule importing a sibling through the package is kept)."""
    return {m: {t for t in ts if not (_is_package(mods[m]) and t.startswith(m + "."))} for m, ts in edges.items()}


def test_the_import_walk_sees_the_real_graph():
    mods = _modules()
    edges = _edges(mods)
    assert "pydebias.tools.cli" in mods and "pydebias.kernels.grouped_moments" in mods
    assert "pydebias.stats" in edges["pydebias.tools.bench_kernels"]
    assert "pydebias.kernels.grouped_quantiles" in edges["pydebias.stats"]  # a function-level import
    # and the checks below can fail: a planted cycle and a planted core -> tooling import
    planted = dict(edges, **{"pydebias.stats": edges["pydebias.stats"] | {"pydebias.tools.bench_kernels"}})
    assert _cycles(_without_package_inits(planted, mods))


def test_no_import_cycles():
    mods = _modules()
    assert _cycles(_without_package_inits(_edges(mods), mods)) == []


def test_core_never_imports_tooling():
    mods = _modules()
    bad = {m: sorted(t for t in ts if t.startswith(TOOLING)) for m, ts in _edges(mods).items()
           if not m.startswith(TOOLING)}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_no_sys_path_edits_in_library_or_tests():
    offenders = []
    for base in (os.path.join(ROOT, "pydebias"), os.path.join(ROOT, "kernels"), os.path.join(ROOT, "tests")):
        for d, _, files in os.walk(base):
            for f in files:
                if f.endswith(".py") and f != "test_layout.py":
                    text = open(os.path.join(d, f), encoding="utf-8").read()
                    if re.search(r"sys\.path\s*(\[|\.insert|\.append|=|\.remove)", text):
                        offenders.append(os.path.join(d, f))
    assert offenders == []


def test_checkout_root_shadows_no_installed_package(tmp_path):
    """Python started in the checkout root finds an installed ``kernels`` package (as
    transformers imports Hugging Face's), not the checkout's ``kernels/`` folder, and still
    finds the Triton kernels as ``pydebias.kernels``."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("WHO = 'installed'\n")
    code = textwrap.dedent("""
        import importlib.util, kernels
        print(kernels.WHO)
        spec = importlib.util.find_spec("pydebias.kernels.grouped_moments")
        print(spec is not None)
    """)
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["installed", "True"]


def _docstrings():
    for name, path in _modules().items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                             ast.ClassDef))]:
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield f"{name}:{getattr(node, 'name', '<module>')}", doc


def test_no_docstring_longer_than_40_lines():
    long = {where: doc.count("\n") + 1 for where, doc in _docstrings() if doc.count("\n") + 1 > 40}
    assert long == {}


def test_readme_is_for_users():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(readme) <= 12_000, f"README.md has {len(readme)} characters"
    assert "<!-- demo-command -->" in readme and "<!-- test-command -->" in readme
    assert os.path.isfile(os.path.join(ROOT, "docs", "methods.md"))
    for link in re.findall(r"\]\(((?:docs|kernels)/[^)#]+)", readme):
        assert os.path.exists(os.path.join(ROOT, link)), link


def test_nothing_cites_files_outside_the_repository():
    pattern = re.compile(r"shared/design|shared/seeds|\b(?:METHODS|PERFORMANCE|DATA|ARCHITECTURE)\.md\b|design notes")
    hits = []
    for base in ("pydebias", "kernels", "csrc", "tests", "bench", "docs", "README.md", "pyproject.toml", "setup.py"):
        path = os.path.join(ROOT, base)
        files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            if f.endswith((".py", ".md", ".cpp", ".h", ".toml")) and not f.endswith("test_layout.py"):
                for i, line in enumerate(open(f, encoding="utf-8"), 1):
                    if pattern.search(line):
                        hits.append(f"{os.path.relpath(f, ROOT)}:{i}")
    assert hits == []


@pytest.mark.parametrize("module", ["pydebias", "pydebias.methods", "pydebias.models", "pydebias.data"])
def test_core_imports_without_tooling_loaded(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('pydebias.tools')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_readme_python_blocks_run():
    """The README's examples, in order, as a user would paste them (they share names)."""
    import warnings

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    ns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the guard's verdicts
        for code in blocks:
            exec(compile(code, "README.md", "exec"), ns)
    # the quick start's heads and the registry loop's last one: 2 classes over the 64-d embeddings
    assert all(tuple(ns[k].weight.shape) == (2, 64) for k in ("erm", "nt", "nsf", "dfr", "head"))
