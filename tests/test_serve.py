"""`rakd serve`: a package behind an OpenAI-compatible server answers as it was validated."""

import contextlib
import json
import subprocess
import sys

import pytest

from deploy.serve import ServeGuard, chat_formatter, stop_texts
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

    client = TestClient(ServeGuard(echo_app()))
    asked = {"messages": [{"role": "user", "content": "1+1=?"}]}
    assert client.post("/v1/chat/completions", json=asked).json() == {
        **asked,
        "temperature": 0.0,
        "repeat_penalty": 1.0,
    }
    mine = {"prompt": "x", "temperature": 0.7}
    assert client.post("/v1/completions", json=mine).json() == {**mine, "repeat_penalty": 1.0}
    assert client.post("/v1/embeddings", json=mine).json() == mine  # not a generating path: untouched
    assert client.post("/v1/completions", content=b"{not json").status_code == 400


CHAT = "/v1/chat/completions"
ASK = {"messages": [{"role": "user", "content": "1+1=?"}]}


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": "x"}).encode(), 422, "messages"),
        (json.dumps({"messages": "1+1=?"}).encode(), 422, "messages"),
        (json.dumps({"messages": []}).encode(), 422, "messages"),
        (json.dumps({"messages": [{"content": "1+1=?"}]}).encode(), 422, "messages[0]"),
        (json.dumps({"messages": [{"role": "user", "content": 7}]}).encode(), 422, "messages[0]"),
        (json.dumps({**ASK, "max_tokens": -5}).encode(), 422, "max_tokens"),
        (json.dumps({**ASK, "max_tokens": 0}).encode(), 422, "max_tokens"),
        (json.dumps({**ASK, "max_tokens": "9"}).encode(), 422, "max_tokens"),
        (json.dumps({**ASK, "temperature": -1}).encode(), 422, "temperature"),
        (json.dumps({**ASK, "top_p": 3}).encode(), 422, "top_p"),
        (json.dumps({**ASK, "n": 2}).encode(), 422, "n"),
    ],
)
def test_a_bad_request_is_answered_4xx_in_the_openai_shape_naming_its_field(body, status, param):
    from starlette.testclient import TestClient

    seen = []

    async def model(scope, receive, send):  # must never be reached
        seen.append(scope["path"])

    response = TestClient(ServeGuard(model)).post(CHAT, content=body)
    assert response.status_code == status and not seen
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert "\n" not in error["message"]  # one line, no stack or pydantic dump


def test_a_completion_needs_a_prompt():
    from starlette.testclient import TestClient

    client = TestClient(ServeGuard(echo_app()))
    assert client.post("/v1/completions", json={"max_tokens": 4}).json()["error"]["param"] == "prompt"
    assert client.post("/v1/completions", json={"prompt": "1+1=?"}).status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read():
    """413 from the declared length without reading on, and from the length read when none is declared."""
    import asyncio

    from starlette.testclient import TestClient

    client = TestClient(ServeGuard(echo_app(), max_body=1000))
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    assert client.post(CHAT, content=big).status_code == 413
    assert client.post(CHAT, json=ASK).status_code == 200

    chunks = [b"x" * 400] * 100  # 40 kB sent as a stream with no length: refused after the third chunk
    received, sent = [], []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": chunks[len(received) - 1], "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": []}
    asyncio.run(ServeGuard(echo_app(), max_body=1000)(scope, receive, send))
    assert sent[0]["status"] == 413 and len(received) == 3


def test_an_api_key_guards_every_path_but_health():
    from starlette.testclient import TestClient

    client = TestClient(ServeGuard(echo_app(), api_key="s3cret", name="m"))
    assert client.get("/health").json() == {"status": "ok", "model": "m"}
    refused = client.post(CHAT, json=ASK)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert client.post(CHAT, json=ASK, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models").status_code == 401
    assert client.post(CHAT, json=ASK, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_serving_another_machine_without_a_key_is_refused(tmp_path):
    from deploy.serve import serve
    from rakd.schema import ConfigError

    with pytest.raises(ConfigError, match="--api-key"):
        serve(tmp_path, host="0.0.0.0", port=0, label=None, threads=1)


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


def test_a_chat_model_stops_at_the_end_of_its_turn(smollm_gguf):
    response = chat_formatter(smollm_gguf)(messages=[{"role": "user", "content": "1+1=?"}])
    assert response.prompt.startswith("<|im_start|>") and response.prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_end|>" in response.stop and response.added_special


_served_processes: list = []  # the server of the `served` block now open


@contextlib.contextmanager
def served(path, *args):
    """`rakd serve PATH --port 0` in its own process; yields its base URL."""
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", str(path), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "serving NAME (LABEL) on http://127.0.0.1:PORT/v1"
        if not line.startswith("serving"):
            server.kill()
            pytest.fail(f"rakd serve did not start: {line!r} {server.stderr.read()[-2000:]}")
        _served_processes.append(server)
        yield line.split()[-1]
    finally:
        _served_processes.clear()
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


def _rss_kib(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


@pytest.mark.integration
@pytest.mark.heavy
def test_under_concurrent_load_every_request_is_answered_as_validated(smoke_run, smoke_root):
    """8 clients at once on loopback, 48 requests over the validated questions (bounded in count and time): every
    one answered 200 with the validated runtime's own words, none lost, the server's memory bounded; the bad
    requests of a user's first try answered 4xx while it serves, and a key it was started with enforced."""
    import concurrent.futures

    import httpx

    from deploy.runtimes import load_package

    run = smoke_root / "smoke"
    report = json.loads((run / "validate" / "report.json").read_text())
    problems = read_jsonl(run / "data" / "test.jsonl")[:6]
    runtime = load_package(run / "package")
    try:
        expected = {p["question"]: runtime.generate(p["question"], report["max_new_tokens"]).text for p in problems}
    finally:
        runtime.close()
    headers = {"Authorization": "Bearer k3y"}
    with served(run / "package", "--api-key", "k3y") as url:
        pid = next(p.pid for p in _served_processes)
        with httpx.Client(base_url=url, timeout=120, headers=headers) as client:

            def ask(question: str) -> tuple[str, str]:
                asked = {"messages": [{"role": "user", "content": question}], "max_tokens": report["max_new_tokens"]}
                response = client.post("/chat/completions", json=asked)
                assert response.status_code == 200, response.text
                return question, response.json()["choices"][0]["message"]["content"]

            ask(problems[0]["question"])  # warm: the model is loaded
            before = _rss_kib(pid)
            questions = [p["question"] for p in problems] * 8
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(ask, questions, timeout=600))
            after = _rss_kib(pid)
            assert len(answers) == len(questions)
            assert all(answer == expected[question] for question, answer in answers)
            assert after - before < 200 * 1024, f"the server grew {after - before} KiB over {len(questions)} requests"
            assert client.post("/chat/completions", content=b"{oops").status_code == 400
            assert client.post("/chat/completions", json={"messages": [], "max_tokens": -5}).status_code == 422
            assert client.post("/chat/completions", content=b"x" * (2 << 20)).status_code == 413
            assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"
            assert httpx.post(url + "/chat/completions", json={"messages": []}).status_code == 401


@pytest.mark.integration
@pytest.mark.heavy
def test_serve_refuses_a_tampered_package_and_a_folder_that_is_not_one_in_one_line(smoke_run, smoke_root, tmp_path):
    import shutil

    package = tmp_path / "package"
    shutil.copytree(smoke_root / "smoke" / "package", package)
    model = next(package.glob("*.gguf"))
    with model.open("r+b") as f:
        f.seek(-64, 2)
        f.write(b"\0" * 64)
    for folder in (package, tmp_path / "empty"):
        folder.mkdir(exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "serve", str(folder), "--port", "0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1 and str(folder) in done.stderr, done.stderr
