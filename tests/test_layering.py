"""Layering (issue 32): which vespo_cli modules may import which, read from the sources with `ast`.

* `config.py` imports neither `rollout/` nor `data.py`: it takes engine names, source checks and the
  objectives' params from small modules below all three (`engines.py`, `catalog.py`,
  `objective_params.py`), so a bad `--set` fails without importing torch.
* `rollout/` imports neither `train/` nor `plan/`: what both a run and `vespo rollout` consume (the
  prompt stream, the recorded inputs) is `inputs.py`; the model configs are `models.py`.
* A name starting with `_` is private to its package: no module imports one from another top-level
  package of vespo_cli (each top-level module, e.g. `arith.py`, is a package of its own), nor
  reads one as an attribute of such a module, and no `__all__` lists one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "vespo_cli"

FORBIDDEN = [  # (importer: a module or a package prefix, what it must not import, why)
    ("vespo_cli.config", "vespo_cli.rollout", "config takes engine names from vespo_cli.engines"),
    ("vespo_cli.config", "vespo_cli.data", "config takes sources from vespo_cli.catalog, templates from prompts"),
    ("vespo_cli.rollout", "vespo_cli.train", "rollout imports what a run consumes from vespo_cli.inputs"),
    ("vespo_cli.rollout", "vespo_cli.plan", "rollout reads model configs from vespo_cli.models"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether `name` (dotted, under vespo_cli) is a module or package of the source tree."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def package(name: str) -> str:
    """The top-level package of a vespo_cli module: vespo_cli.train.forward → train, vespo_cli.arith → arith."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(path: Path):
    """(line, imported module, names taken from it) for every import in the file, nested ones too;
    relative imports resolved. `import a.b` takes no names."""
    name = module_name(path)
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, (), [alias]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.split(".")[: len(base.split(".")) - node.level + 1]
                source = ".".join(parent + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield node.lineno, source, tuple(a.name for a in node.names), node.names


def sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def forbidden_imports() -> list[str]:
    out = []
    for path in sources():
        importer = module_name(path)
        for line, source, names, _ in imports(path):
            targets = [source, *(f"{source}.{n}" for n in names)]
            for who, banned, why in FORBIDDEN:
                if within(importer, who) and any(within(t, banned) for t in targets):
                    out.append(f"{where(path, line)}: {importer} imports {banned} ({why})")
    return out


def private_imports() -> list[str]:
    """Underscored names imported from, or read as attributes of, another top-level package's modules."""
    out = []
    for path in sources():
        importer = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        modules: dict[str, str] = {}  # local name → the vespo_cli module it is bound to
        for line, source, names, aliases in imports(path):
            if not within(source, "vespo_cli"):
                continue
            if not names:  # import vespo_cli.a.b [as c]
                for alias in aliases:
                    bad = [p for p in alias.name.split(".") if private(p)]
                    if bad and package(alias.name) != package(importer):
                        out.append(f"{where(path, line)}: {importer} imports private module {alias.name}")
                    if alias.asname:
                        modules[alias.asname] = alias.name
                continue
            if any(private(p) for p in source.split(".")) and package(source) != package(importer):
                out.append(f"{where(path, line)}: {importer} imports from private module {source}")
            for alias in aliases:
                full = f"{source}.{alias.name}"
                if is_module(full):
                    modules[alias.asname or alias.name] = full
                    owner = full
                else:
                    owner = source
                if private(alias.name) and package(owner) != package(importer):
                    out.append(f"{where(path, line)}: {importer} imports {alias.name} from {source}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and package(modules[node.value.id]) != package(importer)
            ):
                out.append(f"{where(path, node.lineno)}: {importer} reads {modules[node.value.id]}.{node.attr}")
    return out


def private_exports() -> list[str]:
    out = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AugAssign | ast.AnnAssign)
                else []
            )
            if not any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) or node.value is None:
                continue
            for elt in ast.walk(node.value):
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str) and private(elt.value):
                    out.append(f"{where(path, elt.lineno)}: __all__ lists {elt.value}")
    return out


def test_the_checks_see_the_whole_package():
    mods = {module_name(p) for p in sources()}
    assert {"vespo_cli.config", "vespo_cli.rollout.run", "vespo_cli.train.loop", "vespo_cli.probe.gradients"} <= mods


def test_no_forbidden_imports():
    problems = forbidden_imports()
    assert not problems, "\n".join(problems)


def test_no_private_names_across_packages():
    problems = private_imports()
    assert not problems, "\n".join(problems)


def test_no_private_names_in_all():
    problems = private_exports()
    assert not problems, "\n".join(problems)


def test_checks_catch_what_they_forbid(tmp_path, monkeypatch):
    """The checks fail on a file that breaks each rule (they are not vacuous)."""
    pkg = tmp_path / "vespo_cli"
    (pkg / "rollout").mkdir(parents=True)
    (pkg / "train").mkdir()
    for init in (pkg, pkg / "rollout", pkg / "train"):
        (init / "__init__.py").write_text('__all__ = ["ok", "_hidden"]\n')
    (pkg / "train" / "forward.py").write_text("def _decoder(): ...\n")
    (pkg / "config.py").write_text("from .rollout import ENGINES\nfrom . import data\n")
    (pkg / "rollout" / "run.py").write_text(
        "def f():\n    from ..train.forward import _decoder\n    from ..train import forward\n"
        "    forward._decoder()\n    import vespo_cli.plan.models\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert len(forbidden_imports()) == 5  # config: rollout, data; rollout/run: train twice, plan
    assert [p.split(": ", 1)[0] for p in private_imports()] == [
        "vespo_cli/rollout/run.py:2",
        "vespo_cli/rollout/run.py:4",
    ]
    assert len(private_exports()) == 3


def test_config_does_not_import_torch():
    """A typo in `--set` gets its one-line error without the seconds-long torch import (issue 30)."""
    heavy = ("torch", "vespo_cli.rollout", "vespo_cli.data", "vespo_cli.objectives")
    code = f"import sys, vespo_cli.config; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
