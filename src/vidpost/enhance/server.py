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

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vidpost.enhance.base import Enhancer
from vidpost.errors import VidpostError, first_line
from vidpost.jsonhttp import send_json

log = logging.getLogger("vidpost")

_ENDPOINTS = "use GET /v1/models or POST /v1/chat/completions"
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 500: "internal_error"}


class _RequestError(VidpostError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _text(content: object) -> str:
    """A message's content: a string, or OpenAI's list of parts of which the text ones are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return " ".join(texts)
    raise _RequestError(400, "the last user message's content must be a string or a list of text parts")


def parse_chat_request(request: object, served: str) -> str:
    """The prompt of a /v1/chat/completions request, each field checked against what this server offers."""
    if not isinstance(request, dict):
        raise _RequestError(400, "the request must be a JSON object with model and messages")
    if request.get("stream"):
        raise _RequestError(400, "streaming is not supported; send stream: false")
    if request.get("n", 1) != 1:
        raise _RequestError(400, "only n = 1 is supported")
    model = request.get("model")
    if model is not None and model != served:
        raise _RequestError(404, f"model {model!r} is not served here; this server serves {served!r}")
    messages = request.get("messages")
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise _RequestError(400, "messages must be a non-empty list of {role, content} objects")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise _RequestError(400, "messages hold no user message to rewrite")
    return _text(users[-1].get("content"))


def chat_completion(served: str, rewrite: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": served,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": rewrite}, "finish_reason": "stop"}],
    }


class _Handler(BaseHTTPRequestHandler):
    enhancer: Enhancer  # set per server by make_server
    lock: threading.Lock

    def _send(self, code: int, payload: dict, note: str) -> None:
        send_json(self, code, payload, note, log)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": {"message": message, "type": _ERROR_TYPES.get(code, "error"), "param": None,
                                    "code": code}}, message)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": self.enhancer.name, "object": "model", "created": 0, "owned_by": "vidpost"}
            self._send(200, {"object": "list", "data": [model]}, "")
        else:
            self._error(404, f"no endpoint {self.path}; {_ENDPOINTS}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no endpoint {self.path}; {_ENDPOINTS}")
            return
        start = time.perf_counter()
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            prompt = parse_chat_request(request, self.enhancer.name)
            with self.lock:  # one generation at a time: local models are not shared across threads
                fallbacks = self.enhancer.counts.fallbacks
                rewrite = self.enhancer.rewrite([prompt])[0]
                fell_back = self.enhancer.counts.fallbacks > fallbacks
        except _RequestError as err:
            self._error(err.code, str(err))
            return
        except ValueError as err:  # the body is not JSON
            self._error(400, f"the body is not JSON ({first_line(err)})")
            return
        except Exception as err:  # the enhancer crashed: the client may retry
            log.exception("enhancer failed")
            self._error(500, first_line(err))
            return
        note = f"{'fell back' if fell_back else 'rewritten'} in {time.perf_counter() - start:.2f} s"
        self._send(200, chat_completion(self.enhancer.name, rewrite), note)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _send logs one line per request

    def log_message(self, format: str, *args) -> None:
        log.warning("%s %s", self.address_string(), format % args)


def make_server(enhancer: Enhancer, host: str, port: int) -> ThreadingHTTPServer:
    """A threaded HTTP server of `enhancer`, bound (port 0: a free port, see server_port) but not yet serving."""
    handler = type("EnhancerHandler", (_Handler,), {"enhancer": enhancer, "lock": threading.Lock()})
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise VidpostError(f"cannot serve the enhancer on {host}:{port} ({err.strerror or err})") from None


def serve(enhancer: Enhancer, host: str = "127.0.0.1", port: int = 8011,
          on_ready: Callable[[ThreadingHTTPServer], None] | None = None) -> None:
    """Serve until Ctrl-C (or `server.shutdown()` from another thread); `on_ready(server)` once it listens."""
    with make_server(enhancer, host, port) as server:
        print(f"serving enhancer {enhancer.name} at http://{host}:{server.server_port}/v1 (Ctrl-C stops)", flush=True)
        if on_ready is not None:
            on_ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
        log.info("enhancer %s: %s", enhancer.name, enhancer.counts.summary())
