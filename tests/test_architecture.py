"""The import layering of ARCHITECTURE.md, enforced statically: every module under fastadapt/ is parsed
with ``ast`` and each of its imports checked against the folder it lives in. A failure names the file and
line. (test_runtime.py also runs the runtime and the CLI with torch made unimportable.)"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fastadapt"
TORCH = ("torch", "torchvision", "functorch", "higher")
LAYERS = ("data", "runtime", "models", "meta_train", "cli")  # folders; any other module is "core"

# layer -> (imports it may never make, imports it may make only inside a function: lazily)
RULES = {
    "core": (TORCH + ("fastadapt.meta_train", "fastadapt.models", "fastadapt.cli"), ("fastadapt.runtime",)),
    "data": (TORCH + ("fastadapt.meta_train", "fastadapt.models", "fastadapt.cli", "fastadapt.runtime"), ()),
    "runtime": (TORCH + ("fastadapt.meta_train", "fastadapt.models", "fastadapt.cli"), ()),
    "models": (("fastadapt.meta_train", "fastadapt.runtime", "fastadapt.cli", "fastadapt.data"), ()),
    "meta_train": (("fastadapt.cli",), ()),
    "cli": ((), TORCH + ("fastadapt.meta_train", "fastadapt.models")),
}

# Known breaks of the rule, each with its fix; the test fails when one is gone, so the list only shrinks.
KNOWN = {
    ("standalone.py", "fastadapt.cli"): "export_command (CLI code: flags, printing) belongs in cli/; it imports "
                                        "cli.check_out",
}


def layer_of(relative: Path) -> str:
    if relative.parts[0] in LAYERS:
        return relative.parts[0]
    return "cli" if relative.name == "__main__.py" else "core"  # __main__ is the console entry point


def module_name(relative: Path) -> str:
    parts = ["fastadapt", *relative.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(relative: Path, source: str) -> list:
    """(line, imported module, lazily) for every import in ``source``, relative ones resolved."""
    name = module_name(relative)
    package = name.split(".") if relative.name == "__init__.py" else name.split(".")[:-1]
    found = []

    def visit(node, lazily: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, lazily) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((node.lineno, target if is_module(target) else base, lazily))
        lazily = lazily or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, lazily)

    visit(ast.parse(source, str(relative)), False)
    return found


def matches(target: str, prefixes) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def violations(relative: Path, source: str) -> list:
    """(where, target, why) for each import that breaks the layering."""
    layer = layer_of(relative)
    never, only_lazily = RULES[layer]
    broken = []
    for line, target, lazily in imports(relative, source):
        if matches(target, never) or (not lazily and matches(target, only_lazily)):
            why = "never" if matches(target, never) else "only inside a function (lazily)"
            broken.append((f"fastadapt/{relative.as_posix()}:{line}", target,
                           f"{layer} imports {target}: {layer} may import it {why} (ARCHITECTURE.md)"))
    return broken


def all_violations() -> list:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        found += [(relative.as_posix(), *v) for v in violations(relative, path.read_text(encoding="utf-8"))]
    return found


def test_imports_follow_the_layering():
    broken = [f"{where}: {why}" for file, where, target, why in all_violations()
              if (file, ".".join(target.split(".")[:2])) not in KNOWN]
    assert not broken, "imports against ARCHITECTURE.md's layering:\n" + "\n".join(broken)


def test_the_known_exceptions_still_exist():
    seen = {(file, ".".join(target.split(".")[:2])) for file, _, target, _ in all_violations()}
    gone = [key for key in KNOWN if key not in seen]
    assert not gone, f"fixed, so remove them from KNOWN: {gone}"


def test_the_checker_catches_each_kind_of_break():
    cases = {
        ("runtime/x.py", "import torch\n"): "runtime imports torch",
        ("runtime/x.py", "def f():\n    from ..meta_train import trainer\n"): "runtime imports fastadapt.meta_train.trainer",
        ("data/x.py", "from ..runtime.model import Model\n"): "data imports fastadapt.runtime.model",
        ("images.py", "from .runtime import load\n"): "only inside a function",
        ("cli/x.py", "from ..meta_train.run import TrainConfig\n"): "only inside a function",
        ("meta_train/x.py", "from .. import cli\n"): "meta_train imports fastadapt.cli",
    }
    for (file, source), words in cases.items():
        found = violations(Path(file), source)
        assert len(found) == 1 and words in found[0][2], (file, source, found)
        assert found[0][0].startswith(f"fastadapt/{file}:"), found
    allowed = [("cli/x.py", "def f():\n    import torch\n"), ("meta_train/x.py", "from ..runtime import Model\n"),
               ("runtime/x.py", "from ..data.sampler import Task\nfrom .. import evaluation\n"),
               ("__init__.py", "def f():\n    from . import runtime\n")]
    for file, source in allowed:
        assert violations(Path(file), source) == [], (file, source)
