"""The package's shape: no import cycle in lickd, every module imports on its own, the command
line on top of everything, and the test seed printed with a failure."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Package name -> folder (``kernels/`` ships as ``lickd.kernels``, see setup.py).
PACKAGES = {"lickd": ROOT / "lickd", "lickd.kernels": ROOT / "kernels"}
#: Compiled modules (lickd._rans, lickd._intconv): imported by name, without Python source to walk.
EXTENSIONS = set(re.findall(r'Pybind11Extension\(\s*"([\w.]+)"', (ROOT / "setup.py").read_text()))


def lickd_modules() -> dict:
    """Every Python module of lickd: dotted name -> file."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict) -> set:
    """The lickd modules ``name`` imports, at module level or inside functions: ``from X import Y``
    counts as importing X.Y when that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules or target in EXTENSIONS else base)
    return {m for m in found if m in modules and m != name}


def import_cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_import_walk_sees_cycles_and_relative_imports():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    modules = lickd_modules()
    assert {"lickd.cli.coding", "lickd.kernels.autotune", "lickd.train.engine"} <= set(modules)
    assert EXTENSIONS == {"lickd._rans", "lickd._intconv"}
    assert "lickd.fileio" in imports_of("lickd.kernels.autotune", modules["lickd.kernels.autotune"], modules)
    assert "lickd.cli.common" in imports_of("lickd.cli.coding", modules["lickd.cli.coding"], modules)
    assert "lickd.zoo" in imports_of("lickd.cli.models", modules["lickd.cli.models"], modules)


def test_no_import_cycle_in_lickd():
    modules = lickd_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_the_command_line_sits_on_top():
    """Nothing outside lickd.cli imports it (torchrun runs ``-m lickd.cli train``), and eval/ and
    train/ hold no argparse."""
    modules = lickd_modules()
    for name, path in modules.items():
        if name.startswith("lickd.cli"):
            continue
        assert not any(m.startswith("lickd.cli") for m in imports_of(name, path, modules)), name
        if name.startswith(("lickd.eval", "lickd.train")):
            assert "argparse" not in path.read_text(), name


def test_every_module_imports_on_its_own(tmp_path):
    """Each module imported first, in one interpreter with lickd's modules forgotten before each
    (the compiled modules stay loaded: an extension module initialises once per process)."""
    names = [n for n in lickd_modules() if not n.endswith(".__main__")]
    if subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode:
        names = [n for n in names if not n.startswith("lickd.kernels")]
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        f"    for m in [m for m in sys.modules if (m == 'lickd' or m.startswith('lickd.')) and m not in {sorted(EXTENSIONS)}]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    r = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)  # outside the checkout, whose source folder would shadow the installed lickd
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_failing_test_prints_its_seed_and_the_seed_replays_its_draws(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_draw.py").write_text(
        "def test_draw(rng):\n    assert False, f'drew {rng.integers(1 << 40)}'\n")

    def run(seed=None):
        env = {k: v for k, v in os.environ.items() if k != "LICKD_TEST_SEED"}
        if seed is not None:
            env["LICKD_TEST_SEED"] = seed
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                            str(tmp_path), str(tmp_path / "test_draw.py")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        seed = r.stdout.split("LICKD_TEST_SEED=")[-1].split()[0]
        return seed, r.stdout.split("drew ")[1].split()[0]

    seed, drawn = run()
    assert run(seed) == (seed, drawn)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_python_dash_m_entry_point(args, tmp_path):
    """``python -m lickd.cli`` is the lickd command (and what torchrun runs for training)."""
    r = subprocess.run([sys.executable, "-m", "lickd.cli", *args], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
