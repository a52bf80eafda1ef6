"""Results as data: a kept comparison read in one place (rakd.compare.record), its context as numbers (rakd 0.6.0's
text read back in one named place), and the documents' result tables generated from the committed results."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from rakd.compare.record import context_lines, context_numbers, context_record, describe_step0, read_comparison
from rakd.compare.stats import correctness

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STEP0 = {"prompts": 64, "group_size": 8, "pass_rate": 0.057, "informative_groups": 0.36, "gap_median": -0.0,
         "gap_p5": -0.54, "gap_p95": 12.43, "clamped": 0.213, "positive_no_gradient": 0.149,
         "negative_no_gradient": 0.055}  # fmt: skip
OLD = {  # the hard regime's context as rakd 0.6.0 wrote it (bench/results/compare-hard-2026-12-04)
    "budget": "flops",
    "budget per job": "1.51 TFLOP of training",
    "config": "tiny, regime hard",
    "interval": "95%, Welch t: seed-mean variances of both methods plus the paired per-problem variance, "
    "Welch-Satterthwaite df",
    "jobs": 38,
    "prompts x G": "32 x 8",
    "reference": "rakd (α=0.5), 50 RL steps",
    "step 0 (TRRD's teacher term on the warm start's own samples)": "64 x 8 own samples: pass 5.7%, mixed groups "
    "36%; log π − log π_T median -0.00 (5-95%: -0.54 .. +12.43), clamped 21.3%; TRRD's clip removes the gradient "
    "of 14.9% of A > 0 tokens and 5.5% of A < 0 tokens",
    "teacher:student non-embedding parameters": "1,049,728 : 131,392 (8.0x)",
    "warm start FLOPs (shared, not in the budget)": "914.18 GFLOP",
    "warm start greedy": "9.2%",
}


def test_rakd_060_text_context_reads_back_as_numbers():
    c = context_numbers(OLD)
    assert c["step0"] == pytest.approx(STEP0) and c["step0"]["prompts"] == 64
    assert c["parameters"] == {"teacher": 1049728, "student": 131392, "ratio": 1049728 / 131392}
    assert c["budget_per_job"] == {"flops_budget": pytest.approx(1.51e12)}
    assert c["warmstart_flops"] == pytest.approx(914.18e9) and c["warmstart_greedy"] == pytest.approx(0.092)
    assert (c["reference"], c["reference_steps"], c["prompts_per_step"], c["group_size"]) == ("rakd (α=0.5)", 50, 32, 8)
    assert c["interval"]["level"] == 0.95 and c["jobs"] == 38 and c["failed_jobs"] == 0
    # written back for people, it says what the text said, line for line
    lines = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in context_lines(c)}
    assert {k: v for k, v in OLD.items() if k != "jobs"} == {k: lines[k] for k in OLD if k != "jobs"}
    assert context_numbers(c) is c  # numbers stay as they are


def test_a_context_entry_0_6_0_never_wrote_is_refused():
    with pytest.raises(ValueError, match="did not write.*surprise"):
        context_numbers({**OLD, "surprise": "1"})
    with pytest.raises(ValueError, match="step-0 line"):
        context_numbers({**OLD, "step 0 (TRRD's teacher term on the warm start's own samples)": "pass 5%"})


def test_a_new_context_is_numbers_and_its_lines_say_them():
    c = context_record(config="tiny", jobs=3, budget="steps", budget_per_job={}, reference="rakd/a0.5",
                       reference_steps=20, prompts_per_step=4, group_size=2, level=0.9, step0=STEP0,
                       parameters={"teacher": 8, "student": 2, "ratio": 4.0}, failed_jobs=1)  # fmt: skip
    json.dumps(c)  # storable as it is
    lines = context_lines(c)
    assert "budget per job: 20 RL steps" in lines and "reference: rakd/a0.5, 20 RL steps" in lines
    assert "teacher:student non-embedding parameters: 8 : 2 (4.0x)" in lines
    assert any(line.endswith(describe_step0(STEP0)) for line in lines) and "pass 5.7%" in describe_step0(STEP0)
    assert any(line.startswith("failed jobs: 1") for line in lines) and "interval: 90%, Welch t" in lines[-1]


def test_a_kept_comparison_is_read_with_its_answers_in_every_reading():
    kept = read_comparison(RESULTS / "compare-hard-2026-12-04")
    assert len(kept.rows) == kept.context["jobs"] == 38 and kept.context["step0"]["pass_rate"] == 0.057
    assert {len(correctness(r)) for r in kept.rows} == {1000}  # every job's answers to the 1000 test problems
    steps = [r["at_reference_steps"] for r in kept.rows if r.get("at_reference_steps")]
    assert steps and {len(correctness(r)) for r in steps} == {1000}
    assert kept.lr_sweep and kept.failed == []


def test_a_folder_that_is_not_a_comparison_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_comparison(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"context": OLD, "runs": [{"name": "a"}]}))
    (tmp_path / "per_problem.json").write_text("{}")
    with pytest.raises(ValueError, match="per_problem.json: no answers for the job a"):
        read_comparison(tmp_path)


def _tables():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("tables", ROOT / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documents_result_tables_are_what_the_committed_results_say():
    # README.md and docs/results.md: every table between the markers regenerated from bench/results and
    # rakd/stages/evidence.json equals the committed one (`python bench/tables.py` rewrites them)
    tables = _tables()
    generated = 0
    for name in tables.DOCUMENTS:
        text = (ROOT / name).read_text()
        generated += len(tables.BLOCK.findall(text))
        assert tables.refresh(text, name)[1] == [], f"{name}: run python bench/tables.py"
    assert generated >= 11


def test_a_changed_number_or_an_unknown_table_is_caught():
    tables = _tables()
    text = (ROOT / "README.md").read_text()
    block = tables.BLOCK.search(text)
    edited = text.replace(block["body"], block["body"].replace("5.7%", "5.8%", 1))
    fixed, changed = tables.refresh(edited)
    assert changed == ["rule-short"] and fixed == text
    with pytest.raises(SystemExit, match="unknown generated table"):
        tables.refresh("<!-- generated by bench/tables.py: nonsense -->\n| x |\n<!-- end of generated table -->")


def test_every_kept_job_row_is_a_job_row():
    # every comparison committed under bench/results, old ones included, has only the keys JobRow names
    from rakd.compare.record import JobRow, Reading

    folders = sorted(p.parent for p in RESULTS.glob("compare-*/per_problem.json"))
    assert len(folders) >= 12  # those kept with their per-problem answers (from 2026-12-03 on)
    for folder in folders:
        for row in read_comparison(folder).rows:
            assert set(row) <= set(JobRow.__annotations__), f"{folder.name}: {set(row) - set(JobRow.__annotations__)}"
            for key in ("at_reference_steps", "at_reference_seconds"):
                assert set(row.get(key) or {}) <= set(Reading.__annotations__), folder.name
