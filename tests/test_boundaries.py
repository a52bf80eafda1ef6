"""The module boundaries (docs/design.md, "Boundaries"), checked by walking imports, and an import graph
without cycles.

- The core modules (data, verify, models, losses, rollout, train and the stage functions beside them) never import
  `prefect`, `export`, `deploy` or `flows`.
- `export` and `deploy` import `rakd` only (never each other, `flows` or `prefect`).
- Only the composition root (`rakd.registry`, `rakd.cache`, `rakd.summary`, `rakd.config`, `rakd.cli`) imports every
  package.
- `flows` holds Prefect wrappers; nothing outside the composition root imports it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rakd", "export", "deploy", "flows")
COMPOSITION_ROOT = {"rakd.registry", "rakd.cache", "rakd.summary", "rakd.config", "rakd.cli"}
FORBIDDEN = {
    "rakd": {"prefect", "flows", "export", "deploy"},
    "export": {"flows", "deploy", "prefect"},
    "deploy": {"flows", "export", "prefect"},
    "flows": set(),
    "bench": {"flows"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (a lazy import still makes an edge)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imports(path)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_boundaries(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if module_name(path) in COMPOSITION_ROOT:
            continue
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_composition_root_never_imports_prefect_at_module_level():
    for name in COMPOSITION_ROOT:
        tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert not top & {"prefect", "flows"}, name


def project_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in imports(path) if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_project_import_graph_has_no_cycle():
    cycle = find_cycle(project_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_sees_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_walker_sees_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text(
        "import prefect.tasks\nfrom flows.pipeline import x\nfrom . import y\ndef f():\n    import deploy\n"
    )
    assert imported_roots(sample) == {"prefect", "flows", "deploy"}


LIGHT_CHECK = """
import contextlib, io, sys
from rakd.cli import build_parser, main
from rakd.config import load_config

load_config("configs/tiny.yaml", ["distill.rl.steps=3"])
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    build_parser().parse_args(["--help"])
with contextlib.redirect_stderr(io.StringIO()):
    code = main(["verify-package", "no-such-package"])
heavy = sorted(name for name in ("torch", "transformers", "tokenizers", "llama_cpp", "onnxruntime", "prefect")
               if name in sys.modules)
print(f"exit={code} heavy={','.join(heavy)}")
"""


def test_the_command_line_and_loading_a_config_stay_light():
    """`rakd --help`, `rakd verify-package` and loading a config import neither torch nor transformers (nor
    llama.cpp, ONNX Runtime or Prefect): a device that only verifies a package needs none of them."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LIGHT_CHECK], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("exit=2 "), done.stdout  # a missing package is a user error, reported
    assert last == "exit=2 heavy=", f"imported: {last.removeprefix('exit=2 heavy=')}"


def test_models_never_import_data_and_the_prompt_format_is_ground_floor():
    """The prompt format is read by data, models, rollout, export and deploy: it imports nothing of the project,
    and the models package (the tokenizer) never reaches up into the data package that uses it."""
    graph = project_graph()
    assert graph["rakd.prompt"] == set()
    up = {f"{m} -> {t}" for m, targets in graph.items() if m.startswith("rakd.models") for t in targets}
    assert not {edge for edge in up if " -> rakd.data" in edge}, up


def test_the_flows_give_a_fresh_machine_s_ephemeral_prefect_server_time_to_start():
    """Prefect's 20-second default was too short for the first start (database migration) on 2 cores."""
    import os
    import subprocess
    import sys

    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    code = f"import flows.pipeline, prefect.settings as s; print(s.{name}.value())"
    env = {k: v for k, v in os.environ.items() if k != name}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) >= 120
