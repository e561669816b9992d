"""Imports point down: every module of omni/ and every root script parsed with `ast` (imports inside functions
and under `if TYPE_CHECKING:` included), the module import graph built, and checked for cycles and for imports
that go up the layer table below. The checker itself is checked on small fake graphs."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module may import its own unit (a subpackage such as omni.models, a top-level module, a root
# script) and units of lower layers only: never a higher layer, never another unit of its own layer.
LAYERS = [
    ("errors", ("omni.errors",)),   # the user-error type: every layer raises it, so it imports no omni module
    ("foundations", ("omni", "omni.config", "omni.device", "omni.audio", "omni.tokenizer", "omni.text_norm",
                     "omni.prompts", "omni.metrics", "omni.perceptual", "omni.export", "omni.charlm")),
    ("models, chat template, dataset builder", ("omni.models", "omni.chat", "omni.builtin")),
    ("vocabularies, probes, CTC decoding", ("omni.vocab", "omni.probe", "omni.ctc")),
    ("artifact loader, data pipelines", ("omni.artifacts", "omni.data")),
    ("inference, training engine", ("omni.infer", "omni.train")),
    ("the server", ("omni.serve",)),
    ("entry points", ("omni.asr", "omni.ocr", "omni.tts", "omni.vocode", "*.py")),   # *.py: the root scripts
]
# Beyond the layers: the built-in dataset's builder is for scripts/make_demo_data.py, the probes and the stage
# scripts; what loads, feeds and serves models never imports it, and chat and export never import the engine.
FORBIDDEN = {
    **{unit: ("omni.builtin",) for unit in ("omni.vocab", "omni.artifacts", "omni.data", "omni.infer", "omni.train")},
    "infer_chat.py": ("omni.builtin", "omni.train"),
    "export.py": ("omni.builtin", "omni.train"),
}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name → file, for every .py under omni/ ("omni.models.vision") and every root script
    ("infer_chat.py", named by its file: scripts are not importable modules)."""
    files = {}
    for p in sorted((root / "omni").rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    files.update({p.name: p for p in sorted(root.glob("*.py"))})
    return files


def imports_of(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of `modules` that the module `name` (parsed as `tree`) imports anywhere in its body.
    `from a import b` is the module a.b when there is one, else a; a name with no module of its own (an
    attribute, a third-party package) resolves to its nearest enclosing known module or is dropped."""
    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {known(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: `from . import x` in omni/data/sft.py is omni.data.x
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str) and \
                getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            found.add(known(node.args[0].value))
    return found - {None, name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(ast.parse(p.read_text(encoding="utf-8"), str(p)), name, p.name == "__init__.py",
                             set(files))
            for name, p in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → ... → a, as a list of modules) per strongly connected component that has one."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def visit(v: str) -> None:   # Tarjan; the graph is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while not scc or scc[-1] != v:
                scc.append(stack.pop())
                on_stack.discard(scc[-1])
            sccs.append(set(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for scc in sccs:
        start = min(scc)
        if len(scc) == 1 and start not in graph.get(start, ()):
            continue
        path, seen = [start], {start}   # walk inside the component until a module repeats
        while True:
            nxt = min(w for w in graph[path[-1]] if w in scc)
            if nxt in seen:
                cycles.append(path[path.index(nxt):] + [nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return sorted(cycles)


def unit_of(module: str) -> str:
    """omni.models.vision → omni.models; omni.chat → omni.chat; a root script is its own unit."""
    return module if module.endswith(".py") else ".".join(module.split(".")[:2])


def layer_of(unit: str, layers=LAYERS) -> int | None:
    return next((i for i, (_, units) in enumerate(layers) for u in units if fnmatch.fnmatchcase(unit, u)), None)


def upward_imports(graph: dict[str, set[str]], layers=LAYERS, forbidden=FORBIDDEN) -> list[str]:
    """Every import of a higher layer or of another unit of the same layer, every import FORBIDDEN names, and
    every module whose unit has no layer."""
    problems = []
    for a in sorted(graph):
        ua = unit_of(a)
        la = layer_of(ua, layers)
        if la is None:
            problems.append(f"{a}: {ua} has no layer in LAYERS (tests/test_imports.py); add it where it belongs")
            continue
        for b in sorted(graph[a]):
            ub = unit_of(b)
            lb = layer_of(ub, layers)
            if ua == ub:
                continue
            if any(ub == f or ub.startswith(f + ".") for f in forbidden.get(ua, ())):
                problems.append(f"{a} imports {b}: {ua} must not import {ub}")
            elif lb is not None and lb >= la:
                problems.append(f"{a} imports {b}: {ua} ({layers[la][0]}) must not import {ub} "
                                f"({'the same layer' if lb == la else layers[lb][0]})")
    return problems


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_imports_point_down():
    problems = upward_imports(import_graph())
    assert not problems, "imports against the layer table:\n" + "\n".join(problems)


def test_graph_sees_every_kind_of_import():
    source = ("import omni.models.vision as v\n"
              "from omni.models import layers\n"
              "from omni.tokenizer import EOS\n"
              "from . import hints\n"
              "import numpy\n"
              "def f():\n"
              "    from omni.chat import Turn\n"
              "    return importlib.import_module('omni.train.engine')\n")
    modules = {"omni", "omni.models", "omni.models.vision", "omni.models.layers", "omni.tokenizer", "omni.data",
               "omni.data.hints", "omni.data.sft", "omni.chat", "omni.train", "omni.train.engine"}
    assert imports_of(ast.parse(source), "omni.data.sft", False, modules) == {
        "omni.models.vision", "omni.models.layers", "omni.tokenizer", "omni.data.hints", "omni.chat",
        "omni.train.engine"}
    graph = import_graph()
    assert "omni.models.omni" in graph["omni.artifacts"]                  # imported inside a function
    assert "omni.infer.chat" in graph["infer_chat.py"]                    # root scripts are in the graph


def test_checker_catches_a_cycle():
    graph = {"omni.a": {"omni.b"}, "omni.b": {"omni.c"}, "omni.c": {"omni.a", "omni.d"}, "omni.d": set(),
             "omni.e": {"omni.a"}, "omni.f": {"omni.f"}}
    assert find_cycles(graph) == [["omni.a", "omni.b", "omni.c", "omni.a"], ["omni.f", "omni.f"]]
    assert find_cycles({"omni.a": {"omni.b"}, "omni.b": set()}) == []


def test_checker_catches_upward_imports():
    fake = {"omni.models.vision": {"omni.data.images", "omni.models.layers", "omni.tokenizer"},
            "omni.models.omni": {"omni.chat"},
            "omni.metrics": {"omni.models.vision"},
            "omni.data.sft": {"omni.train.engine", "omni.chat"},
            "omni.infer.tts": {"omni.train.engine"},
            "infer_chat.py": {"omni.builtin.sft", "omni.infer.chat"},
            "omni.vocab": {"omni.builtin.speech", "omni.models.talker", "omni.text_norm"},
            "omni.export": {"omni.artifacts"},
            "omni.artifacts": {"omni.export"},
            "omni.nowhere": set()}
    problems = upward_imports(fake)
    flagged = {p.split(":")[0] for p in problems}
    assert flagged == {"omni.models.vision imports omni.data.images", "omni.models.omni imports omni.chat",
                       "omni.metrics imports omni.models.vision", "omni.data.sft imports omni.train.engine",
                       "omni.infer.tts imports omni.train.engine", "infer_chat.py imports omni.builtin.sft",
                       "omni.vocab imports omni.builtin.speech",
                       "omni.export imports omni.artifacts", "omni.nowhere"}, problems
