"""Every command README.md shows can run as written: its script or module exists, every --flag is one its parser
accepts, every --config file exists and is JSON, and every --set key is a key of that stage's config.

Flags are read from the source (ast), not by running anything: a script's own add_argument calls and those of
the modules it takes `main`, `run` or `parse_args` from (the stage scripts get --config, --set and --fresh from
omni/train/engine.py). --set keys are resolved by omni.config.load_config, as the stage itself resolves them.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = ("python", "python3", "torchrun")
SHELL_OPERATORS = ("&&", "||", "|", ";", ">", ">>", "<", "2>", "&")
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def commands(markdown: str) -> list[str]:
    """The lines of fenced code blocks that run python or torchrun (after any VAR=value prefixes), with
    backslash-continued lines joined."""
    out, in_block, pending = [], False, ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        line = f"{pending} {line.strip()}" if pending else line.strip()
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        pending = ""
        words = words_of(line)
        if words and Path(words[0]).name in RUNNERS:
            out.append(line)
    return out


def words_of(line: str) -> list[str]:
    """The command's words: comments dropped, leading VAR=value assignments stripped, cut at a shell operator."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:   # not shell (an unbalanced quote in prose or Python)
        return []
    while words and ENV.match(words[0]):
        words = words[1:]
    for i, w in enumerate(words):
        if w in SHELL_OPERATORS:
            return words[:i]
    return words


def module_file(module: str, importer: Path) -> Path | None:
    """The repository file of `module` as `importer` imports it (scripts import their neighbours by name)."""
    rel = Path(*module.split("."))
    for base in (ROOT, importer.parent):
        for p in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
            if p.is_file():
                return p
    return None


def accepted_flags(path: Path, seen: set[Path] | None = None) -> set[str]:
    """Every option string of the add_argument calls in `path` and in the modules it imports its entry point
    (main, run, parse_args) from."""
    seen = set() if seen is None else seen
    seen.add(path)
    flags: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flags |= {a.value for a in node.args
                      if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                any(a.name in ("main", "run", "parse_args") for a in node.names):
            target = module_file(node.module, path)
            if target is not None and target not in seen:
                flags |= accepted_flags(target, seen)
    return flags | {"-h", "--help"}


@functools.lru_cache(maxsize=None)
def config_class(script: Path):
    """The config dataclass of a stage script (its Stage subclasses' config_cls) and its default config."""
    from omni.train.engine import Stage
    name = f"_readme_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)   # dataclasses look their module up
    spec.loader.exec_module(mod)   # the stage scripts train only under __main__
    stages = [v for v in vars(mod).values()
              if isinstance(v, type) and issubclass(v, Stage) and v.__module__ == mod.__name__]
    classes = {s.config_cls for s in stages}
    assert len(classes) == 1, f"{script.name}: expected one config class, found {classes}"
    return classes.pop(), stages[0].default_config


def problems(line: str) -> list[str]:
    """What in one README command would fail: a missing script, module, flag, config file or config key."""
    words = words_of(line)
    if words and Path(words[0]).name == "torchrun":   # torchrun's own options come before the script
        script = next((i for i, w in enumerate(words) if w.endswith(".py")), len(words))
        words = ["python"] + words[script:]
    if len(words) < 2:
        return [f"no script in {line!r}"]
    if words[1] == "-m":
        module = words[2] if len(words) > 2 else ""
        if module.split(".")[0] == "omni":
            path, args = module_file(module, ROOT), words[3:]
            if path is None:
                return [f"module {module} not found (no {Path(*module.split('.'))}.py)"]
        else:
            return [] if module and importlib.util.find_spec(module) else [f"module {module!r} is not installed"]
    else:
        path, args = ROOT / words[1], words[2:]
        if not path.is_file():
            return [f"script {words[1]} not found"]
    found: list[str] = []
    flags = accepted_flags(path)
    config, overrides, in_set = None, [], False
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            in_set = False
            flag = arg.split("=", 1)[0]
            if flag not in flags:
                found.append(f"{path.relative_to(ROOT)} has no option {flag}")
            elif flag == "--config":
                config = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            elif flag == "--set":
                in_set = True
        elif in_set:
            if "=" not in arg:
                found.append(f"--set {arg}: expected key=value")
            else:
                overrides.append(arg)
    if config is not None:
        if not (ROOT / config).is_file():
            return found + [f"config {config} not found"]
        try:
            json.loads((ROOT / config).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return found + [f"config {config} is not JSON: {e}"]
    if "--config" in flags and (config or overrides):
        from omni.config import ConfigError, load_config
        cls, default = config_class(path)
        try:
            load_config(cls, ROOT / (config or default), overrides)
        except ConfigError as e:
            found.append(str(e))
    return found


README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = commands(README)


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 30, f"only {len(COMMANDS)} python/torchrun commands found in README.md"


@pytest.mark.parametrize("line", COMMANDS, ids=[c[:80] for c in COMMANDS])
def test_readme_command_exists(line):
    assert problems(line) == []


def test_a_wrong_command_is_caught():
    block = ("```bash\n"
             "OMP_NUM_THREADS=1 python train_vision.py --config configs/demo/vision.json \\\n"
             "    --set model.caption.n_layers=0 save_dir=runs/x   # a comment\n"
             "torchrun --nproc_per_node=2 train_text.py --config configs/thinker_tiny.json --fresh\n"
             "echo python is not run here\n"
             "```\n")
    good = commands(block)
    assert len(good) == 2 and all(problems(c) == [] for c in good), [problems(c) for c in good]
    assert commands("python train_text.py --nope\n") == []   # outside a code block: prose
    bad = {
        "python train_text.py --config configs/demo/thinker.json --set model.n_layerz=2": "n_layerz",
        "python train_text.py --config configs/demo/nope.json": "nope.json not found",
        "python train_text.py --confg configs/demo/thinker.json": "no option --confg",
        "python scripts/nope.py --out x": "nope.py not found",
        "python -m omni.nope --ckpt x": "omni.nope not found",
        "python export.py --omni_ckpt a --output_dir b --vocoder c": "no option --vocoder",
        "python -m omni.tts --ckpt_dir d --text hi --out_file x.wav": "no option --out_file",
        "torchrun --nproc_per_node=2 train_ocr.py --config configs/ocr_tiny.json --set ctc_weigh=1": "ctc_weigh",
        "python train_talker.py --config configs/demo/talker.json --set codec.model.codebookz=2": "codebookz",
    }
    for line, expected in bad.items():
        found = problems(line)
        assert any(expected in p for p in found), f"{line!r} not caught: {found}"


def test_the_readme_and_the_config_notes_stay_short():
    """The README is a guide of at most 400 lines (figures live in docs/results.md); a config's `_comment` says
    what the config is for in at most 300 characters."""
    assert len(README.splitlines()) <= 400
    long = {str(p.relative_to(ROOT)): len(json.loads(p.read_text(encoding="utf-8")).get("_comment", ""))
            for p in sorted((ROOT / "configs").rglob("*.json"))}
    assert {p: n for p, n in long.items() if n > 300} == {}
    assert (ROOT / "docs" / "results.md").is_file() and "docs/results.md" in README
