"""`rakd serve PACKAGE`: a packaged GGUF (or a bare `.gguf` file) behind an OpenAI-compatible HTTP server
(llama-cpp-python's server: `/v1/chat/completions`, `/v1/completions`, `/v1/models`).

The server asks the model the way it was validated: a package is verified first; the chat prompt is the GGUF's
own chat template (llama.cpp's Jinja renderer, as validation formats it), or rakd's question-and-newline for a
model without one (the last user message); generation stops at every token that ends the model's turn (EOS, EOT,
EOM and the template's end of turn, as the package's Modelfile lists them); and a request that does not say
otherwise decodes as validation did: temperature 0 and no repeat penalty (llama-cpp-python's server defaults are
0.8 and 1.1). The model loads through `rakd.models.llamacpp.open_llama`, which keeps llama.cpp's AMX buffers off
where they crash on quantised weights.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from pathlib import Path

from deploy.artefacts import Artefact, discover, package_artefact
from rakd.models.gguf_file import gguf_metadata, special_token
from rakd.prompt import prompt_text, turn_end
from rakd.schema import ConfigError, ModelLoadError

# What a request that leaves them out gets: the decoding the package was validated with (greedy, no penalty).
VALIDATED_DEFAULTS = {"temperature": 0.0, "repeat_penalty": 1.0}
GENERATING_PATHS = ("/v1/chat/completions", "/v1/completions")


def stop_texts(path: Path, meta: dict) -> list[str]:
    """The text of every token that ends the model's turn: EOS, EOT, EOM and the chat template's end of turn."""
    bos, eos = special_token(path, meta, "bos"), special_token(path, meta, "eos")
    stops = [eos, special_token(path, meta, "eot"), special_token(path, meta, "eom")]
    if template := meta.get("tokenizer.chat_template"):
        stops.append(turn_end(template, bos=bos, eos=eos))
    return list(dict.fromkeys(s for s in stops if s))


def chat_formatter(path: Path):
    """A llama-cpp-python chat formatter for the GGUF at `path`: its chat template with every stop of its turn, or
    rakd's prompt format (the last user message and a newline, after a BOS) for a model without a template."""
    from llama_cpp.llama_chat_format import ChatFormatterResponse, Jinja2ChatFormatter

    meta = gguf_metadata(path)
    stops = stop_texts(path, meta)
    template = meta.get("tokenizer.chat_template")
    if template:
        jinja = Jinja2ChatFormatter(
            template, eos_token=special_token(path, meta, "eos"), bos_token=special_token(path, meta, "bos")
        )

        def templated(*, messages, **kwargs):
            return dataclasses.replace(jinja(messages=messages, **kwargs), stop=stops)

        return templated

    def plain(*, messages, **_kwargs):
        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            raise ValueError("a model without a chat template answers the last user message: the request has none")
        content = users[-1]["content"]
        text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
        return ChatFormatterResponse(prompt=prompt_text(text), stop=stops, added_special=False)

    return plain


MAX_BODY_BYTES = 1 << 20  # a request body past this is refused (413) before it is read further


class RequestError(Exception):
    """A request the server refuses before the model sees it: its HTTP status, message and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> bytes:
        """The OpenAI error shape: `{"error": {"message", "type", "param", "code"}}`."""
        kind = "authentication_error" if self.status == 401 else "invalid_request_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


def _number(payload: dict, key: str, low: float, high: float | None = None) -> None:
    value = payload.get(key)
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise RequestError(422, f"'{key}' must be a number {bound} (got {value!r})", key)


def _content_ok(content) -> bool:
    if content is None or isinstance(content, str):
        return True
    return isinstance(content, list) and all(isinstance(part, dict) for part in content)


def check_request(path: str, payload) -> None:
    """Raise `RequestError` (400 or 422, naming the field) for a generating request the model must not see."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"the request body must be a JSON object (got {type(payload).__name__})")
    if path == "/v1/chat/completions":
        messages = payload.get("messages")
        if messages is None:
            raise RequestError(422, '\'messages\' is required: a list of {"role", "content"} objects', "messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(422, '\'messages\' must be a non-empty list of {"role", "content"}', "messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError(422, f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
            if not _content_ok(message.get("content")):
                raise RequestError(422, f"messages[{i}].content must be a string or a list of parts", f"messages[{i}]")
    else:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise RequestError(422, "'prompt' is required: a string or a non-empty list", "prompt")
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise RequestError(422, f"'max_tokens' must be an integer >= 1, or null (got {max_tokens!r})", "max_tokens")
    _number(payload, "temperature", 0.0, 2.0)
    _number(payload, "top_p", 0.0, 1.0)
    n = payload.get("n")
    if n is not None and n != 1:
        raise RequestError(422, f"'n' must be 1: one completion per request (got {n!r})", "n")


class ServeGuard:
    """ASGI middleware in front of llama-cpp-python's app: `/health`; the API key (`Authorization: Bearer KEY`)
    on every other path; a body limit (413 as soon as the declared or the read length passes it); a generating
    request checked (400/422 in the OpenAI error shape, naming the field) and given the validated decoding
    (`defaults`) for the keys it leaves out."""

    def __init__(
        self,
        app,
        defaults: dict = VALIDATED_DEFAULTS,
        *,
        max_body: int = MAX_BODY_BYTES,
        api_key: str | None = None,
        name: str = "",
    ):
        self.app, self.defaults, self.max_body, self.api_key, self.name = app, defaults, max_body, api_key, name

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") == "/health":  # unauthenticated, for load balancers and probes
            return await _respond(send, 200, json.dumps({"status": "ok", "model": self.name}).encode())
        try:
            self.authorize(scope)
            if scope.get("method") not in ("POST", "PUT", "PATCH"):
                return await self.app(scope, receive, send)
            body = await self.read_body(scope, receive)
            if scope.get("path") in GENERATING_PATHS:
                body = self.checked(scope["path"], body)
        except RequestError as err:
            return await _respond(send, err.status, err.body())
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app({**scope, "headers": headers}, replay, send)

    def authorize(self, scope) -> None:
        if not self.api_key:
            return
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise RequestError(401, "a valid API key is required: 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def read_body(self, scope, receive) -> bytes:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise RequestError(413, f"the request body ({int(declared)} bytes) is over the limit of {self.max_body}")
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                raise RequestError(413, f"the request body is over the limit of {self.max_body} bytes")
        return body

    def checked(self, path: str, body: bytes) -> bytes:
        try:
            payload = json.loads(body)
        except ValueError as err:
            raise RequestError(400, f"the request body is not valid JSON: {err}") from None
        check_request(path, payload)
        return json.dumps({**self.defaults, **payload}).encode()


async def _respond(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def served_artefact(path: str | Path, label: str | None = None) -> Artefact:
    """The model `rakd serve` runs: a `.gguf` file as it is, or a verified package's first model (or `label`)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return discover(path)[0]
    if not (path / "manifest.json").is_file():
        raise ModelLoadError(f"{path}: not a package (no manifest.json) and not a .gguf file")
    return package_artefact(path, label)


def make_app(
    package: str | Path,
    *,
    label: str | None = None,
    threads: int = 1,
    n_ctx: int = 0,
    api_key: str | None = None,
    max_body: int = MAX_BODY_BYTES,
):
    """The FastAPI app serving the packaged GGUF (the first, or the one named `label`) of a verified package, behind
    `ServeGuard` (health, API key, body limit, request checks, the validated decoding)."""
    import llama_cpp.server.app as server_app
    from llama_cpp.llama_chat_format import chat_formatter_to_chat_completion_handler
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from rakd.models.llamacpp import open_llama

    artefact = served_artefact(package, label)
    if artefact.format != "gguf":
        raise ModelLoadError(
            f"{package}: its model {artefact.label} is {artefact.format}; rakd serve runs GGUF models on llama.cpp "
            "(package with package.prefer: gguf)"
        )
    handler = chat_formatter_to_chat_completion_handler(chat_formatter(artefact.path))

    class PackageProxy(LlamaProxy):  # llama-cpp-python's loader, replaced by ours (AMX buffers, our chat handler)
        @staticmethod
        def load_llama_from_model_settings(settings):
            try:
                return open_llama(settings.model, threads=threads, n_ctx=n_ctx, chat_handler=handler, seed=0)
            except Exception as err:  # noqa: BLE001 - llama.cpp reports failures as ValueError/RuntimeError
                raise ModelLoadError(f"{settings.model}: llama.cpp cannot load this GGUF: {err}") from err

    server_app.LlamaProxy = PackageProxy  # create_app builds its proxy from this module name
    path = Path(package)
    name = json.loads((path / "manifest.json").read_text())["name"] if path.is_dir() else path.stem
    model = ModelSettings(model=str(artefact.path), model_alias=name, n_threads=threads, n_ctx=n_ctx, verbose=False)
    app = server_app.create_app(server_settings=ServerSettings(), model_settings=[model])
    app.add_middleware(ServeGuard, api_key=api_key, max_body=max_body, name=name)
    return app, name, artefact


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    package: str | Path,
    *,
    host: str,
    port: int,
    label: str | None,
    threads: int,
    n_ctx: int = 0,
    api_key: str | None = None,
    max_body: int = MAX_BODY_BYTES,
    open_to_all: bool = False,
) -> None:
    """Run the server until interrupted; prints `serving NAME (LABEL, ...) on http://HOST:PORT/v1` once it listens. An
    address other than loopback needs an API key, or `open_to_all` said on purpose."""
    import socket

    import uvicorn

    if host not in LOOPBACK and not api_key and not open_to_all:
        raise ConfigError(
            f"rakd serve: --host {host} serves other machines, and no API key is set: pass --api-key KEY (or set "
            "RAKD_API_KEY), or --no-api-key to serve without one on purpose"
        )
    app, name, artefact = make_app(
        package, label=label, threads=threads, n_ctx=n_ctx, api_key=api_key, max_body=max_body
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # port 0: a free one, said in the line below
    sock.listen(2048)  # connections wait in the backlog from now on, while the model loads
    bound = sock.getsockname()[1]
    keyed = "API key required" if api_key else "no API key"
    print(f"serving {name} ({artefact.label}, {keyed}) on http://{host}:{bound}/v1", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
