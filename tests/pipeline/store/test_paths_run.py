"""RunDir (pipeline/store/paths.py) is the one place that builds run paths: no other module of ``pipeline/`` spells one.

The names are derived from RunDir itself, not listed here: every property and every path-making method is
evaluated with a placeholder (``\\0``) for the run folder and for each argument, giving the run-relative paths
(``report.json``, ``quantize/sqnr.json``, ``export/\\0``, ``report/\\0.png``, ``\\0-\\0-bundle``). Then every string
of code under ``pipeline/`` (an f-string with ``\\0`` for each ``{...}``; docstrings are prose and left out) is
refused when it

- is exactly a run file's name (``"report.json"``, ``"stages.json"``, ``f"{model}-{target}-bundle"``),
- holds a run path with a folder (``"quantize/qat-torch.json"``, ``"artifacts/edgenet/export/model-fp32.onnx"``,
  ``f"report/pareto-{key}.png"``), even in a message, or
- is joined with ``/`` onto a path while naming a run folder (``run_dir / "report"``, ``artifacts / "bundles"``).

Left out: store/paths.py itself, and bundle/files/ (scripts that run inside a bundle, not in a run folder). A
bundle's own layout (``models/``, ``data/``) is the bundle module's table; where it reuses a run file's name it
says so (``run.report_json.name``).
"""
import ast
import inspect
import re
from pathlib import Path

from pipeline.store.paths import RunDir

ROOT = Path(__file__).resolve().parents[3]
PIPELINE = ROOT / "pipeline"
EXEMPT = (PIPELINE / "store" / "paths.py", PIPELINE / "bundle" / "files")
HOLE = "\0"  # a run folder, an argument, or the value of an f-string's {...}
PART = r"[^/\s'\"`]+"


def run_paths() -> list[tuple[str, ...]]:
    """Every path RunDir makes, as parts relative to the run folder (or, for bundles, to the folder they go in)."""
    run = RunDir(Path(HOLE))
    made = []
    for name, member in inspect.getmembers(RunDir):
        if name.startswith("_") or name in ("root", "for_model", "relative", "relpath"):
            continue
        if isinstance(member, property):
            value = getattr(run, name)
        else:
            params = list(inspect.signature(member).parameters)[1:]
            value = getattr(run, name)(*[Path(HOLE) if p == "out_dir" else HOLE for p in params])
        assert isinstance(value, Path), name
        parts = value.parts[1:] if value.parts[0] == HOLE else value.parts
        made.append(parts)
    return made


def _pattern(text: str) -> str:
    return PART.join(map(re.escape, text.split(HOLE)))


def rules() -> tuple[re.Pattern, re.Pattern, set[str]]:
    """(a run file's name, exactly; a run path with a folder, anywhere in a string; the run folders' names)."""
    paths = run_paths()
    def is_file(part: str) -> bool:  # a folder's name has no dot (``report``, ``bundles``), a made name a HOLE
        return "." in part or (HOLE in part and part != HOLE)

    names = {p[-1] for p in paths if is_file(p[-1])}
    nested = {"/".join(p) for p in paths if len(p) > 1}
    folders = {part for p in paths for part in p if part != HOLE and not is_file(part)}
    exact = re.compile("|".join(_pattern(n) for n in sorted(names)))
    inside = re.compile(r"(?:^|(?<=[\s/'\"`(]))(?:" + "|".join(_pattern(n) for n in sorted(nested)) + r")(?=$|[\s'\"`).,;:])")
    return exact, inside, folders


def _text(node: ast.AST) -> str | None:
    """A string constant, or an f-string with HOLE for each ``{...}``; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def offences(source: str, where: str = "<source>") -> list[str]:
    """Each run path spelled in ``source``, as ``where:line: text (why)``."""
    exact, inside, folders = rules()
    tree = ast.parse(source)
    skip = _docstrings(tree)
    inner = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or id(node) in inner:
            continue
        text = _text(node)
        if text is not None:
            if exact.fullmatch(text):
                found.append((node.lineno, text, "a run file's name"))
            elif inside.search(text):
                found.append((node.lineno, text, "a run path"))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            joined = _text(node.right)
            if joined is not None and joined.split("/")[0] in folders:
                found.append((node.lineno, joined, "a run folder joined onto a path"))
    return [f"{where}:{line}: {text!r} ({why})" for line, text, why in sorted(set(found))]


def test_the_names_come_from_rundir():
    """The rules hold RunDir's layout: if this fails, the derivation broke and the grep below would pass blindly."""
    exact, inside, folders = rules()
    for name in ("report.json", "stages.json", "report.md", "model.pt", "qat-torch.json", "latency.png",
                 "pareto-cpu.png", "edgenet-web-bundle", "edgenet-web-bundle.tar.gz"):
        assert exact.fullmatch(name), name
    for path in ("export/model-fp32.onnx", "quantize/qat-torch.json", "report/pareto-cpu.png", "train/model.pt",
                 "data/summary.json", "engines/status.json"):
        assert inside.search(f"the file {path}."), path
    assert {"export", "quantize", "report", "train", "data", "engines", "bundles"} <= folders
    assert not exact.fullmatch(".png") and not exact.fullmatch("index.html") and not exact.fullmatch("data")


def test_the_check_refuses_each_way_of_spelling_a_run_path():
    bad = {
        'p = run_dir / "report.json"': "a run file's name",
        'p = artifacts / "bundles"': "a run folder",
        'p = run_dir / "report" / "x"': "a run folder",
        'p = Path("artifacts/edgenet/export/model-fp32.onnx")': "a run path",
        'p = f"report/pareto-{key}.png"': "a run path",
        'p = f"{name}-{target}-bundle"': "a run file's name",
        'msg = "see quantize/sensitivity.json."': "a run path",
        'if path.name == "stages.json": pass': "a run file's name",
    }
    for line, why in bad.items():
        found = offences(line)
        assert found and why in found[0], (line, found)
    fine = ['"""Writes report.json and report/ under export/x."""', 'msg = "report.json is only read"',
            'p = folder / "models"', 'stage = "export"', 'kind = ".png"']
    for line in fine:
        assert offences(line) == [], line


def test_no_module_outside_rundir_spells_a_run_path():
    found = []
    for path in sorted(PIPELINE.rglob("*.py")):
        if any(path == e or e in path.parents for e in EXEMPT):
            continue
        found += offences(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == [], "run paths spelled outside RunDir (build them with pipeline.store.paths.RunDir):\n" + \
        "\n".join(found)
