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
import json
from pathlib import Path

from deploy.artefacts import Artefact, discover, package_artefact
from rakd.models.gguf_file import gguf_metadata, special_token
from rakd.prompt import prompt_text, turn_end
from rakd.schema import ModelLoadError

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


class ValidatedDefaults:
    """ASGI middleware: a generating request's JSON body gets VALIDATED_DEFAULTS for the keys it leaves out."""

    def __init__(self, app, defaults: dict = VALIDATED_DEFAULTS):
        self.app, self.defaults = app, defaults

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in GENERATING_PATHS:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None  # the server answers a malformed body with its own error
        if isinstance(payload, dict):
            body = json.dumps({**self.defaults, **payload}).encode()
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


def served_artefact(path: str | Path, label: str | None = None) -> Artefact:
    """The model `rakd serve` runs: a `.gguf` file as it is, or a verified package's first model (or `label`)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return discover(path)[0]
    if not (path / "manifest.json").is_file():
        raise ModelLoadError(f"{path}: not a package (no manifest.json) and not a .gguf file")
    return package_artefact(path, label)


def make_app(package: str | Path, *, label: str | None = None, threads: int = 1, n_ctx: int = 0):
    """The FastAPI app serving the packaged GGUF (the first, or the one named `label`) of a verified package."""
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
    app.add_middleware(ValidatedDefaults)
    return app, name, artefact


def serve(package: str | Path, *, host: str, port: int, label: str | None, threads: int, n_ctx: int = 0) -> None:
    """Run the server until interrupted; prints `serving NAME (LABEL) on http://HOST:PORT/v1` once it listens."""
    import socket

    import uvicorn

    app, name, artefact = make_app(package, label=label, threads=threads, n_ctx=n_ctx)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # port 0: a free one, said in the line below
    bound = sock.getsockname()[1]
    print(f"serving {name} ({artefact.label}) on http://{host}:{bound}/v1", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
