"""The import structure: layers that only import downwards, and no circles between modules.

``runtime/`` is what ships to a device, so it imports nothing else of the project; ``exporters/`` are library
functions that take paths and arrays, so they import nothing from ``pipeline/``. Inside ``pipeline/`` the
command line sits on the stages, the stages on the wings (report, measure, bundle, training), the wings on the
data set and config tables, those on the run folder (``store/``), and the store on the model and variant tables, the variant table on the targets table. :data:`LAYERS` is that order; a module may import its own layer or any layer below it, never one
above. Every import counts, including those inside functions (where this code base puts its lazy imports),
relative ones and ``importlib.import_module("...")``. A circle between modules is refused even inside one layer:
each module of a circle can only be understood (and imported) with the others.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "exporters", "runtime")
#: top to bottom: each entry is a module-name prefix; a module belongs to the longest prefix that names it
LAYERS = (
    ("pipeline", "pipeline.cli", "pipeline.api", "pipeline.__main__"),
    ("pipeline.devices",),
    ("pipeline.stages",),
    ("pipeline.guard",),
    ("pipeline.report",),
    ("pipeline.measure",),
    ("pipeline.bundle",),
    ("pipeline.training",),
    ("pipeline.dataset",),
    ("pipeline.config",),
    ("pipeline.store",),
    ("pipeline.models",),
    ("pipeline.variants",),
    ("pipeline.targets",),
    ("pipeline.signals",),
    ("pipeline.console",),
    ("pipeline.errors",),
    ("exporters",),
    ("runtime",),
)


def _imported(node: ast.AST, module: str) -> list[str]:
    """The absolute module names one node imports; ``module`` is the dotted name of the file's package
    context (for ``a/b/c.py`` it is ``a.b.c``; for ``a/b/__init__.py``, ``a.b.__init__``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".")[: -node.level]  # `from ..x import y` in a.b.c -> a.x
            base = ".".join(package + ([node.module] if node.module else []))
        # `from pkg import name`: the submodule pkg.name when there is one (resolved by the caller), else pkg
        return [f"{base}.{a.name}" for a in node.names] + [base]
    if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
        return [node.args[0].value]  # importlib.import_module("pipeline.x") is an import too
    return []


def import_graph(root: Path, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported module of the project: first line}, for every ``.py`` file under ``packages``
    (the files a bundle ships as data, such as ``pipeline/bundle/files/``, are modules of no package and are
    left out)."""
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if any(not (d / "__init__.py").is_file() for d in path.relative_to(root).parents
                   if d != Path(".") for d in [root / d]):
                continue
            files[".".join(path.relative_to(root).with_suffix("").parts)] = path
    known = {m.removesuffix(".__init__") for m in files}
    graph = {}
    for dotted, path in files.items():
        me = dotted.removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            names = _imported(node, dotted)
            if isinstance(node, ast.ImportFrom):  # the submodules named, else the module itself
                subs = [n for n in names[:-1] if n in known]
                names = subs if len(subs) == len(names) - 1 else subs + [names[-1]]
            for name in names:
                while name and name not in known:  # `import a.b.c` of a function's module a.b
                    name = name.rpartition(".")[0]
                if name and name != me:
                    edges.setdefault(name, node.lineno)
        graph[me] = edges
    return graph


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    return index


def upward_imports(graph) -> list[str]:
    return [f"{m} (layer {layer_of(m)}) imports {n} (layer {layer_of(n)}) at line {line}"
            for m, edges in sorted(graph.items()) for n, line in sorted(edges.items())
            if layer_of(m) is not None and layer_of(n) is not None and layer_of(n) < layer_of(m)]


def circles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_every_module_has_a_layer():
    graph = import_graph(ROOT)
    assert len(graph) > 50  # a renamed folder must not make the tests below pass vacuously
    assert [m for m in graph if layer_of(m) is None] == []


def test_no_import_runs_back_up():
    assert upward_imports(import_graph(ROOT)) == []


def test_no_import_circles():
    assert circles(import_graph(ROOT)) == []


def test_no_two_modules_share_a_name_in_pipeline():
    """``validate.py`` beside ``stages/validate.py`` made every traceback and search ambiguous."""
    stems = {}
    for path in (ROOT / "pipeline").rglob("*.py"):
        if path.name != "__init__.py" and "files" not in path.relative_to(ROOT).parts:
            stems.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    stage_names = {p.stem for p in (ROOT / "pipeline" / "stages").glob("*.py")}
    assert {s: p for s, p in stems.items() if len(p) > 1} == {}
    assert stage_names & {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir()} == set()


def _tree(tmp_path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checker_finds_every_kind_of_import(tmp_path):
    """Top-level, inside a function, relative, ``from`` and ``importlib``: each is an edge, with its line."""
    root = _tree(tmp_path, {
        "exporters/__init__.py": "", "exporters/sub/__init__.py": "", "exporters/sub/fine.py": "",
        "pipeline/__init__.py": "", "pipeline/store/__init__.py": "", "pipeline/store/paths.py": "",
        "pipeline/config.py": "", "runtime/__init__.py": "", "runtime/metadata.py": "",
        "exporters/sub/m.py": (
            "import os\n"
            "import pipeline.store.paths\n"
            "def f():\n"
            "    from pipeline.store.paths import atomic_path\n"
            "    from ...pipeline import config\n"
            "    from . import fine\n"
            "    import importlib\n"
            "    return importlib.import_module('pipeline.config')\n"
            "from runtime import metadata\n")})
    graph = import_graph(root)
    assert graph["exporters.sub.m"] == {"pipeline.store.paths": 2, "pipeline.config": 5, "exporters.sub.fine": 6,
                                        "runtime.metadata": 9}
    assert upward_imports(graph) == [
        "exporters.sub.m (layer 17) imports pipeline.config (layer 9) at line 5",
        "exporters.sub.m (layer 17) imports pipeline.store.paths (layer 10) at line 2",
    ]


def test_the_checker_finds_a_circle_inside_one_layer(tmp_path):
    """Two exporters importing each other (one lazily, inside a function) are a circle; a chain is not."""
    root = _tree(tmp_path, {
        "exporters/__init__.py": "",
        "exporters/a.py": "from .b import x\n",
        "exporters/b.py": "def x():\n    from . import a\n",
        "exporters/c.py": "from .a import y\n",
        "pipeline/__init__.py": "", "runtime/__init__.py": ""})
    assert circles(import_graph(root)) == [["exporters.a", "exporters.b"]]
