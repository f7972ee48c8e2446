"""The wiring: no import circle in monet/ or search/, monet/ free of Ray and Optuna, broken
modules fail loudly, and the registries give the one error text."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("monet", "search")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict:
    """``module -> set of modules of ours it imports`` (module-level and function-level imports).

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``; a
    parent package that Python initialises on the way is not an edge of its own."""
    files = {_module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in files else src
                           for a in node.names]
            for t in targets:
                while t and t not in files:  # `import a.b.c` of a non-module: nearest module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    edges.add(t)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle():
    graph = import_graph()
    assert "monet.train" in graph and "search.tune_monet" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_circle(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "monet" / "a.py").write_text("from monet import b\n")
    (tmp_path / "monet" / "b.py").write_text("def f():\n    from monet.a import x\n")
    assert find_cycle(import_graph(tmp_path)) == ["monet.a", "monet.b", "monet.a"]


def test_monet_imports_neither_ray_nor_optuna():
    for p in (ROOT / "monet").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert n.split(".")[0] not in ("ray", "optuna"), f"{p} imports {n}"


def test_backbones_import_nothing_from_monet_models():
    graph = import_graph()
    assert not [m for m in graph["monet.models.backbones"] if m.startswith("monet.models")]
    assert not [m for m in graph["monet.data.faces"]
                if m in ("monet.data.au", "monet.data.celeba", "monet.data.affwild2",
                         "monet.data.cache", "monet.data.bundle")]


def test_syntax_error_in_a_dataset_module_is_raised(tmp_path):
    """A typo in a loader fails with that error, not with "unknown dataset"."""
    shutil.copytree(ROOT / "monet", tmp_path / "monet")
    au = tmp_path / "monet" / "data" / "au.py"
    au.write_text(au.read_text() + "\ndef broken(:\n")
    code = ("from monet.config import TrainConfig\n"
            "from monet.data import load_dataset\n"
            "load_dataset(TrainConfig(dataset='bp4d', data_root='.'))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "SyntaxError" in r.stderr and "au.py" in r.stderr, r.stderr
    assert "unknown dataset" not in r.stderr


def test_registries_share_one_error_text():
    from monet.config import TrainConfig
    from monet.data import load_dataset
    from monet.errors import ConfigError
    from monet.models import create_model
    from monet.models.encoders import create_encoder
    from monet.registry import DATASETS, ENCODERS, FAMILIES
    from monet.tasks import TaskSpec

    assert {"toy", "tabular", "bp4d", "disfa", "celeba", "affwild2"} <= set(DATASETS.names())
    assert {"vmnc", "vmns", "mrnn", "monet", "oracle"} <= set(FAMILIES.names())
    assert {"mlp", "tiny_cnn"} <= set(ENCODERS.names())
    with pytest.raises(ConfigError, match=r"^dataset: unknown dataset 'nope'; expected one of \["):
        load_dataset(TrainConfig(dataset="nope"))
    with pytest.raises(ConfigError, match=r"^family: unknown model family 'nope'; expected one of \["):
        create_model(TrainConfig(family="nope"), TaskSpec.binary("ab"), (2,))
    with pytest.raises(ConfigError, match=r"backbone: unknown backbone 'nope_net'"):
        create_encoder("nope_net", (3, 32, 32))


def test_no_merge_conflict_markers_left():
    bad = []
    for p in ROOT.rglob("*"):
        if any(part in (".git", ".venv", "results", "__pycache__") for part in p.parts) \
                or not p.is_file() or p.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".sh"):
            continue
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if line.startswith(("<<<<<<< ", ">>>>>>> ")):
                bad.append(f"{p.relative_to(ROOT)}:{i}")
    assert not bad, bad
