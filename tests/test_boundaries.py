"""The layers of the project (docs/design.md, "Layout"), checked by walking imports, and an import graph without
cycles. From the bottom up, a module imports only modules of its own layer or of the layers below it:

1. `rakd`: the library (data, models, losses, rollout, train, and the stages themselves in `rakd.stages`).
2. `export` and `deploy`: built on the library, never on each other.
3. `pipeline` less its command line: the composition root (the stage table, the cache, the summary, the pipeline
   config); the one layer that imports `rakd`, `export` and `deploy` together.
4. `flows`: the Prefect wrappers over the composition root.
5. `pipeline.cli`: the command line, which starts the flows.

Prefect is imported by `flows` alone (and lazily by the command line through them).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rakd", "export", "deploy", "pipeline", "flows")
LAYERS = [{"rakd"}, {"export", "deploy"}, {"pipeline"}, {"flows"}, {"pipeline.cli"}]
SIBLINGS_APART = [{"export", "deploy"}]  # one layer, never importing each other
THIRD_PARTY_ONLY_IN = {"prefect": {"flows"}, "prefect_dask": {"flows"}}


def layer_of(module: str) -> int:
    """The highest layer whose name is the module or a package above it (pipeline.cli sits above pipeline)."""
    found = [i for i, names in enumerate(LAYERS) for name in names if module == name or module.startswith(name + ".")]
    if not found:
        raise KeyError(module)
    return max(found)


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


def test_every_module_imports_only_its_own_layer_or_below():
    graph = project_graph()
    offenders = [
        f"{module} (layer {layer_of(module) + 1}) imports {target} (layer {layer_of(target) + 1})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not offenders, "\n".join(sorted(offenders))


def test_export_and_deploy_never_import_each_other():
    graph = project_graph()
    for apart in SIBLINGS_APART:
        for module, targets in graph.items():
            root = module.split(".")[0]
            if root in apart:
                crossing = {t for t in targets if t.split(".")[0] in apart - {root}}
                assert not crossing, f"{module} imports {sorted(crossing)}"


@pytest.mark.parametrize("library", sorted(THIRD_PARTY_ONLY_IN))
def test_prefect_is_imported_by_the_flows_alone(library):
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            if module.split(".")[0] in THIRD_PARTY_ONLY_IN[library]:
                continue
            if library in imported_roots(path):
                offenders.append(f"{path.relative_to(ROOT)} imports {library}")
    assert not offenders, "\n".join(offenders)


def test_only_the_composition_root_imports_the_library_export_and_deploy_together():
    graph = project_graph()
    for module, targets in graph.items():
        roots = {t.split(".")[0] for t in targets} | {module.split(".")[0]}
        if {"export", "deploy"} <= roots:
            assert module.split(".")[0] in ("pipeline", "flows"), module


def test_the_benches_never_import_the_flows():
    for path in sorted((ROOT / "bench").rglob("*.py")):
        assert "flows" not in imported_roots(path), path


def test_layer_of_reads_the_highest_layer():
    assert layer_of("rakd.stages.distill") == 0 and layer_of("deploy.serve") == 1
    assert layer_of("pipeline.registry") == 2 and layer_of("flows.stages") == 3 and layer_of("pipeline.cli") == 4
    with pytest.raises(KeyError):
        layer_of("numpy")


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
from pipeline.cli import build_parser, main
from pipeline.config import load_config

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


def named_in_docs(text: str) -> tuple[set[str], set[str]]:
    """The dotted names of our packages (`rakd.x.y`, `export.run`, ...) and the file paths (`rakd/x.py`,
    `tests/tiers.py`) a document writes in backticks."""
    import re

    spans = re.findall(r"`([^`\n]+)`", text)
    roots = "|".join(PACKAGES)
    dotted = {m for s in spans for m in re.findall(rf"\b(?:{roots})(?:\.\w+)+", s) if "/" not in s}
    paths = {m for s in spans for m in re.findall(rf"\b(?:{roots}|tests|bench|configs)/[\w/.-]*\.(?:py|yaml)\b", s)}
    return dotted, paths - EXAMPLES


EXAMPLES = {"configs/x.yaml"}  # a placeholder the design writes in an error message


def resolves(name: str) -> bool:
    """Whether `name` is a module of ours, an attribute (a class, function, constant, field) of one, or a config
    key (`export.teacher`: the `teacher` field of the `export` section)."""
    import importlib

    from pipeline.config import PipelineConfig

    section, _, key = name.partition(".")
    if section in PipelineConfig.model_fields and "." not in key:
        config = PipelineConfig.model_fields[section].annotation
        if key in getattr(config, "model_fields", {}):
            return True

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            fields = getattr(found, "model_fields", None) or getattr(found, "__dataclass_fields__", None) or {}
            if hasattr(found, attr):
                found = getattr(found, attr)
            elif attr in fields:
                return True
            else:
                return False
        return True
    return False


@pytest.mark.parametrize("document", ["docs/design.md", "README.md"])
def test_every_module_and_file_the_design_names_exists(document):
    dotted, paths = named_in_docs((ROOT / document).read_text())
    missing = sorted(n for n in dotted if not resolves(n))
    missing += sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{document} names what is not in the code: {missing}"


def test_the_docs_check_sees_names_and_refuses_what_is_not_there():
    dotted, paths = named_in_docs(
        "`rakd.stages.stop.val_stop`, `pipeline/cli.py`, `export.teacher` and `configs/x.yaml`"
    )
    assert dotted == {"rakd.stages.stop.val_stop", "export.teacher"} and paths == {"pipeline/cli.py"}
    assert resolves("rakd.stages.stop.val_stop") and resolves("export.teacher") and resolves("rakd.quant.QuantType")
    assert not resolves("rakd.stages.nowhere") and not resolves("rakd.stages.stop.no_such_function")
    assert len(named_in_docs((ROOT / "docs/design.md").read_text())[0]) > 50  # the design names the code it describes


def test_every_stage_module_keeps_the_stage_contract():
    import inspect

    from pipeline.config import PipelineConfig
    from pipeline.registry import STAGES

    for stage in STAGES:
        module = stage.implementation
        for name in ("run_stage", "read_stage", "done_file", "stage_rows"):
            assert callable(getattr(module, name, None)), f"{stage.module} has no {name}"
        assert list(inspect.signature(module.run_stage).parameters) == ["cfg", "layout"], stage.module
        assert stage.section in PipelineConfig.model_fields, stage.section


def test_a_stage_is_one_entry_and_the_summary_shows_its_rows(tmp_path, monkeypatch):
    """A stage module with the contract and one `Stage` entry: the run's summary has its section."""
    import sys

    import pipeline.summary as summary
    from pipeline.registry import STAGES, Stage

    (tmp_path / "bench_stage.py").write_text("def stage_rows(summary):\n    return [{'tokens/s': summary['speed']}]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bench_stage", raising=False)
    extra = Stage("benchmark", "validation", "bench_stage", help="throughput on the device", after="validate")
    monkeypatch.setattr(summary, "STAGES", (*STAGES, extra))
    sections = dict(summary.summary_sections({"benchmark": {"speed": 42}}))
    assert sections["benchmark"] == [{"tokens/s": 42}]
