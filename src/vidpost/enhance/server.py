"""Any enhancer as an OpenAI-compatible chat endpoint: `vidpost enhance serve --enhancer NAME_OR_DIR`.

    GET  {url}/v1/models             -> 200 {"object": "list", "data": [{"id": NAME, "object": "model", ...}]}
    POST {url}/v1/chat/completions   {"model": NAME, "messages": [..., {"role": "user", "content": PROMPT}]}
      -> 200 {"object": "chat.completion", "model": NAME,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": REWRITE}, "finish_reason": "stop"}]}
    Any error -> 4xx (the request is wrong) or 500, with {"error": {"message": "one line", "type": ..., "code": ...}}.

The prompt is the content of the last user message; the client's other messages (its own system prompt)
are ignored, since the served enhancer carries its own instruction. The reply is the validated rewrite, so
a rewrite that fails the enhancer's check comes back as the prompt itself. Sampling parameters in the
request are ignored too: the enhancer decodes as its config says. Requests are answered one at a time.

    from openai import OpenAI
    OpenAI(base_url="http://127.0.0.1:8011/v1", api_key="EMPTY").chat.completions.create(
        model="shapeworld-enhancer", messages=[{"role": "user", "content": "red ball going right"}])
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from vidpost.enhance.base import Enhancer
from vidpost.errors import VidpostError, first_line
from vidpost.jsonhttp import JSONHandler, RequestError, send_json

log = logging.getLogger("vidpost")

_ENDPOINTS = "use GET /v1/models or POST /v1/chat/completions"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "internal_error",
}


def _text(content: object) -> str:
    """A message's content: a string, or OpenAI's list of parts of which the text ones are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return " ".join(texts)
    raise RequestError(400, "the last user message's content must be a string or a list of text parts")


def parse_chat_request(request: object, served: str) -> str:
    """The prompt of a /v1/chat/completions request, each field checked against what this server offers."""
    if not isinstance(request, dict):
        raise RequestError(400, "the request must be a JSON object with model and messages")
    if request.get("stream"):
        raise RequestError(400, "streaming is not supported; send stream: false")
    if request.get("n", 1) != 1:
        raise RequestError(400, "only n = 1 is supported")
    model = request.get("model")
    if model is not None and model != served:
        raise RequestError(404, f"model {model!r} is not served here; this server serves {served!r}")
    messages = request.get("messages")
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise RequestError(400, "messages must be a non-empty list of {role, content} objects")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise RequestError(400, "messages hold no user message to rewrite")
    return _text(users[-1].get("content"))


def chat_completion(served: str, rewrite: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": rewrite}, "finish_reason": "stop"}],
    }


class _Handler(JSONHandler):
    enhancer: Enhancer  # set per server by make_server
    lock: threading.Lock

    def _send(self, code: int, payload: dict, note: str) -> None:
        send_json(self, code, payload, note, log)

    def _error(self, code: int, message: str) -> None:
        self._send(
            code,
            {"error": {"message": message, "type": _ERROR_TYPES.get(code, "error"), "param": None, "code": code}},
            message,
        )

    def do_GET(self) -> None:
        if not self.authorized():
            self._error(401, "this server needs Authorization: Bearer TOKEN (the client's api_key)")
        elif self.path.rstrip("/") == "/v1/models":
            model = {"id": self.enhancer.name, "object": "model", "created": 0, "owned_by": "vidpost"}
            self._send(200, {"object": "list", "data": [model]}, "")
        else:
            self._error(404, f"no endpoint {self.path}; {_ENDPOINTS}")

    def do_POST(self) -> None:
        if not self.authorized():
            self._error(401, "this server needs Authorization: Bearer TOKEN (the client's api_key)")
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no endpoint {self.path}; {_ENDPOINTS}")
            return
        start = time.perf_counter()
        try:
            prompt = parse_chat_request(self.read_json(), self.enhancer.name)
            with self.lock:  # one generation at a time: local models are not shared across threads
                fallbacks = self.enhancer.counts.fallbacks
                rewrite = self.enhancer.rewrite([prompt])[0]
                fell_back = self.enhancer.counts.fallbacks > fallbacks
        except RequestError as err:
            self._error(err.code, str(err))
            return
        except (ConnectionError, TimeoutError):  # the client hung up or went quiet: JSONHandler.handle logs it
            raise
        except Exception as err:  # the enhancer crashed: the client may retry
            log.exception("enhancer failed")
            self._error(500, first_line(err))
            return
        note = f"{'fell back' if fell_back else 'rewritten'} in {time.perf_counter() - start:.2f} s"
        self._send(200, chat_completion(self.enhancer.name, rewrite), note)


def make_server(
    enhancer: Enhancer, host: str, port: int, max_request_mb: float = 1.0, token: str | None = None
) -> ThreadingHTTPServer:
    """A threaded HTTP server of `enhancer`, bound (port 0: a free port, see server_port) but not yet serving;
    requests above max_request_mb are refused, and with a token every request must carry it (jsonhttp)."""
    handler = type(
        "EnhancerHandler",
        (_Handler,),
        {"enhancer": enhancer, "lock": threading.Lock(), "max_body": int(max_request_mb * 2**20), "token": token},
    )
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise VidpostError(f"cannot serve the enhancer on {host}:{port} ({err.strerror or err})") from None


def serve(
    enhancer: Enhancer,
    host: str = "127.0.0.1",
    port: int = 8011,
    on_ready: Callable[[ThreadingHTTPServer], None] | None = None,
    max_request_mb: float = 1.0,
    token: str | None = None,
) -> None:
    """Serve until Ctrl-C (or `server.shutdown()` from another thread); `on_ready(server)` once it listens."""
    with make_server(enhancer, host, port, max_request_mb, token) as server:
        guard = "a bearer token required" if token else "no token: keep it to trusted networks"
        print(
            f"serving enhancer {enhancer.name} at http://{host}:{server.server_port}/v1 ({guard}; Ctrl-C stops)",
            flush=True,
        )
        if on_ready is not None:
            on_ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
        log.info("enhancer %s: %s", enhancer.name, enhancer.counts.summary())
