"""The module boundaries of DESIGN.md section 9, checked by walking imports."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "rakd": {"prefect", "flows", "export", "deploy"},
    "export": {"flows", "deploy", "prefect"},
    "deploy": {"flows", "export", "prefect"},
    "flows": set(),
    "tests": set(),
    "bench": {"flows"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_boundaries(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_roots(path) & FORBIDDEN[package]
        if package not in ("flows", "tests") and "flows" in imported_roots(path):
            bad.add("flows")
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_walker_sees_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import prefect.tasks\nfrom flows.pipeline import x\nfrom . import y\n")
    assert imported_roots(sample) == {"prefect", "flows"}
