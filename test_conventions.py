"""Project conventions (docs/ and the design notes), checked rather than promised: docstrings with a paper → code map
and deviations, short functions, no stage script importing another, no side effects at import, and every name a
Paper → code map points to exists.
Run: python -m pytest -q test_conventions.py
"""
import re
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


# =============================================================================================
# project conventions: checked, not just promised
# =============================================================================================
SCRIPTS = [p for p in ("tasks.py", "make_data.py", "sft.py", "grpo.py", "evaluate.py", "benchmarks.py")
           if (HERE / p).exists()]
SUPPORT = [p for p in ("vlm.py", "engine.py", "common.py", "records.py", "scenes.py") if (HERE / p).exists()]
STAGES = ("make_data", "sft", "grpo", "evaluate")


@pytest.mark.parametrize("script", SCRIPTS + SUPPORT)
def test_script_conventions(script):
    """Each stage script opens with a paper → code map and a deviations list (support modules with a
    docstring), keeps functions short, imports no other stage script, and does nothing at import time
    beyond defining constants, classes and functions."""
    import ast
    tree = ast.parse((HERE / script).read_text())
    doc = ast.get_docstring(tree) or ""
    assert ("Paper → code" in doc and "Deviations" in doc) if script in SCRIPTS else len(doc) > 200, script
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & (set(STAGES) - {script[:-3]}), f"{script} imports a stage script"
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 80, f"{script}:{node.lineno} {node.name}() is too long"
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            assert all(n.isupper() or n.startswith("_") and n[1:].isupper() for n in names), (script, names)
        elif isinstance(node, ast.If):
            assert ast.unparse(node.test) == "__name__ == '__main__'", script
        else:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            assert docstring or isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)), \
                f"{script}:{node.lineno} runs code at import time"


MODULES = sorted(p.name for p in HERE.glob("*.py") if not p.name.startswith("test_"))


def project_imports(path: Path, names: set) -> set:
    """The modules of `names` that a file imports (anywhere in it, lazily inside functions too)."""
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & names - {path.stem}


def test_layers_no_cycle_and_no_workshop_in_the_pipeline():
    """The top level never imports the workshop (dev/: the benchmarks, the demo's starting model), no two modules
    import each other through any chain, and the model plumbing (vlm.py, engine.py) has no branch on the demo's
    model: that model is a class with its own code, loaded and copied like any other."""
    top = {p[:-3] for p in MODULES}
    workshop = {p.stem for p in (HERE / "dev").glob("*.py")} - top
    graph = {m: project_imports(HERE / f"{m}.py", top | workshop) for m in top}
    assert not {m: g & workshop for m, g in graph.items() if g & workshop}, "the pipeline imports dev/"

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))
    assert not [m for m in top if reaches(m, m)], "an import cycle"
    for name in ("vlm.py", "engine.py"):
        assert "position_table" not in (HERE / name).read_text(), f"{name} knows the demo's model"


def paper_to_code_names(doc: str) -> list:
    """The code names a docstring's "Paper → code" map points to: `name()`, `module.name` and `Class.field`."""
    start = doc.find("Paper → code")
    if start < 0:
        return []
    block = doc[start:].split("\n\n")[0]
    mapped = "\n".join(line.split("→", 1)[1] for line in block.splitlines()[1:] if "→" in line)
    names = re.findall(r"\b((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)\(\)", mapped)
    names += re.findall(r"\b((?:vlm|common|engine|tasks|benchmarks|scenes)\.[A-Za-z_]\w*)", mapped)
    names += re.findall(r"\b(Config\.[a-z_]+)", mapped)
    return sorted(set(names))


@pytest.mark.parametrize("module", MODULES)
def test_paper_to_code_map_names_exist(module):
    """Every function, class or constant a module's "Paper → code" map names exists (module.name is looked up
    in that module, Class.field among the dataclass's fields): the map cannot go stale silently."""
    import ast
    import dataclasses
    import importlib
    mod = importlib.import_module(module[:-3])
    names = paper_to_code_names(ast.get_docstring(ast.parse((HERE / module).read_text())) or "")
    missing = []
    for name in names:
        obj = mod
        for part in name.split("."):
            if dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
                obj = True
                break
            obj = getattr(obj, part, None) if obj is not None else None
            if obj is None and part in sys.modules:
                obj = sys.modules[part]
            elif obj is None:
                try:
                    obj = importlib.import_module(part)
                except ImportError:
                    obj = None
        if obj is None:
            missing.append(name)
    assert not missing, f"{module}: its Paper → code map names {missing}, which do not exist"


DOC_PAGES = ["README.md", "requirements.txt", *sorted(f"docs/{p.name}" for p in (HERE / "docs").glob("*.md"))]


def doc_code_names(text: str) -> list:
    """The `module.name[.attr…]` references of a page, module being one of the project's (top level or dev/)."""
    modules = {p.stem for p in (*HERE.glob("*.py"), *(HERE / "dev").glob("*.py")) if not p.name.startswith("test_")}
    refs = re.findall(r"\b([a-z_][a-z_0-9]*)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", text)
    files = ("py", "sh", "md", "json", "jsonl", "png", "jpg", "txt", "parquet", "tsv", "h5", "npy", "zip", "log")
    return sorted({f"{m}.{rest}" for m, rest in refs if m in modules and rest.split(".")[0] not in files})


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_code_names_exist(page):
    """Every `module.name` (or `module.Class.attr`, `Class.field` of a dataclass) the README, requirements.txt or a
    docs/ page names exists: a renamed or deleted function cannot leave a stale pointer behind."""
    import dataclasses
    import importlib
    sys.path.insert(0, str(HERE / "dev"))
    missing = []
    for ref in doc_code_names((HERE / page).read_text()):
        module, *path = ref.split(".")
        obj = importlib.import_module(module)
        for part in path:
            if dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
                break
            obj = getattr(obj, part, None)
            if obj is None:
                missing.append(ref)
                break
    assert not missing, f"{page} names {missing}, which do not exist"


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_section_pointers_exist(page):
    """Every pointer of the form `README, "Section"`, `(docs/page.md, "Section")` or a link `(page.md#anchor)` names a
    heading of that page."""
    text = " ".join((HERE / page).read_text().split())
    missing = []
    for target, section in re.findall(r"(README|[\w/.-]+\.md)\)?,? \"([^\"]+)\"", text):
        path = HERE / "README.md" if target == "README" else (HERE / page).parent / target
        if not path.exists():
            path = HERE / target
        headings = {line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")}
        if section not in headings:
            missing.append(f"{target}, {section!r}")
    for target, anchor in re.findall(r"\]\(([\w/.-]+\.md)#([\w-]+)\)", (HERE / page).read_text()):
        path = (HERE / page).parent / target
        slugs = {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                 for line in (path.read_text().splitlines() if path.exists() else []) if line.startswith("#")}
        if anchor not in slugs:
            missing.append(f"{target}#{anchor}")
    assert not missing, f"{page} points to sections that do not exist: {missing}"
