import os

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from test servers


@pytest.fixture(scope="session")
def tiny_records():
    from rakd.data.generator import GeneratorConfig, generate

    return generate(GeneratorConfig(n_items=400, templates=["expression", "word"], seed=1))


@pytest.fixture(scope="session")
def tokenizer(tiny_records, tmp_path_factory):
    from rakd.models.tokenizer import TokenizerConfig, train_tokenizer

    return train_tokenizer(tiny_records, TokenizerConfig(vocab_size=320), tmp_path_factory.mktemp("tok"))
