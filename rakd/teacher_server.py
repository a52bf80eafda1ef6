"""A GGUF teacher behind an OpenAI-compatible completions endpoint that scores token ids (`teacher_scorer: openai`).

    python -m rakd.teacher_server --gguf teacher.gguf [--host 127.0.0.1] [--port 8000] [--threads 4]

TRRD, KDRL and OPD need from the teacher only log π_T of the tokens the student sampled. This serves exactly that
for a GGUF teacher on another machine (a CPU box, say), in the request shape of the OpenAI completions API as
vLLM implements it for scoring: `POST /v1/completions` with `prompt` a list of token ids (or a list of such lists),
`echo: true`, `logprobs` and `max_tokens` 0 or 1; each choice's `logprobs.token_logprobs` is null for the first
token and then log π_T(token_i | tokens_<i) on raw logits, `logprobs.tokens` the ids as strings. It scores and
never generates (with `max_tokens` 1 the choice holds the prompt's entries only; vLLM, which refuses 0, appends
the generated token's): `max_tokens` > 1 or `echo: false` is answered 400. `GET /v1/models` names the model.

Why our own server: llama.cpp's `llama-server` returns log-probs of generated tokens only (no prompt log-probs,
ggml-org/llama.cpp#27174), and llama-cpp-python's server takes text prompts and returns echoed log-probs shifted
by one position (abetlen/llama-cpp-python#1983). vLLM serves a torch teacher the same way (`vllm serve TEACHER`,
then `teacher_scorer: {kind: openai, url: http://HOST:8000, model: TEACHER}`).

One model, one request at a time (a lock); standard library HTTP only. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rakd.models.llamacpp import llama_logits, open_llama_exact


class RequestError(ValueError):
    """A request this server cannot answer; its message goes back with status 400."""


def prompt_lists(prompt) -> list[list[int]]:
    """The request's prompt as a list of token-id lists (one list of ids is one prompt)."""
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt):
        if all(isinstance(t, int) for p in prompt for t in p):
            return prompt
    raise RequestError("prompt: send token ids (a list of ints, or a list of such lists); text is not scored here")


def token_logprobs(logits, ids: list[int]) -> list[float | None]:
    """[None, log p(ids[1] | ids[:1]), ...] from the logits (len(ids), vocab) of one evaluation of `ids`."""
    import numpy as np

    shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return [None] + [float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)]


class Scorer:
    def __init__(self, gguf: Path, threads: int, n_ctx: int = 0):
        self.name = gguf.name
        self.llm = open_llama_exact(gguf, threads=threads, n_ctx=n_ctx)
        self.vocab = self.llm.n_vocab()
        self.n_ctx = self.llm.n_ctx()
        self.lock = threading.Lock()

    def completions(self, body: dict) -> dict:
        if body.get("echo") is not True or int(body.get("max_tokens", 16)) > 1:
            raise RequestError("this server scores prompts only: send echo=true and max_tokens 0 or 1")
        prompts = prompt_lists(body.get("prompt"))
        choices = []
        for index, ids in enumerate(prompts):
            bad = [t for t in ids if not 0 <= t < self.vocab]
            if bad:
                raise RequestError(f"prompt {index}: token id {bad[0]} outside the model's vocabulary of {self.vocab}")
            if len(ids) > self.n_ctx:
                raise RequestError(f"prompt {index}: {len(ids)} tokens exceed the context of {self.n_ctx}")
            with self.lock:
                scores = token_logprobs(llama_logits(self.llm, ids), ids)
            choices.append(
                {
                    "index": index,
                    "text": "",
                    "finish_reason": "length",
                    "logprobs": {"tokens": [str(t) for t in ids], "token_logprobs": scores, "top_logprobs": None},
                }
            )
        tokens = sum(len(p) for p in prompts)
        return {
            "object": "text_completion",
            "model": self.name,
            "choices": choices,
            "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
        }


def make_handler(scorer: Scorer):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, allow_nan=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (the http.server API)
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": scorer.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") != "/v1/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(200, scorer.completions(body))
            except (RequestError, json.JSONDecodeError, TypeError, ValueError) as err:
                self._send(400, {"error": {"message": str(err), "type": "invalid_request_error"}})

        def log_message(self, *_):  # quiet: a trainer sends one request per batch
            pass

    return Handler


def serve(gguf: Path, host: str, port: int, threads: int, n_ctx: int = 0) -> None:
    if not gguf.is_file():
        raise SystemExit(f"teacher_server: --gguf {gguf} is not a file")
    scorer = Scorer(gguf, threads, n_ctx)
    server = ThreadingHTTPServer((host, port), make_handler(scorer))
    # the bound address on stdout first (port 0 picks a free one): scripts and tests read it
    print(f"serving {gguf.name} on http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        scorer.llm.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True, help="the teacher as a GGUF file (any llama.cpp type)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=0, help="context length (0: the model's own)")
    args = parser.parse_args(argv)
    serve(args.gguf, args.host, args.port, args.threads, args.n_ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
