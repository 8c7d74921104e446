"""What vidpost's small stdlib HTTP servers (rewards, enhancers) share: a guarded JSON request, the JSON reply.

A request body is read only when its Content-Length is a whole number no larger than the server's cap
(400 for a missing or bad length, 413 above the cap), an idle connection times out, a client that hangs up
is one log line, and when a token is set (its environment variable names it) a request must carry
`Authorization: Bearer TOKEN` (401 otherwise).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from http.server import BaseHTTPRequestHandler

DEFAULT_MAX_REQUEST_MB = 256.0  # a batch of 64 81x480x832 uint8 videos as base64 is about 2.6 GB: send fewer
IDLE_TIMEOUT_S = 60.0  # a connection that sends nothing for this long is closed
TOKEN_ENV = "VIDPOST_SERVER_TOKEN"  # the default variable holding a server's bearer token


class RequestError(Exception):
    """A request the server refuses, with the HTTP status that says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def server_token(env: str = TOKEN_ENV) -> str | None:
    """The bearer token a server requires: the value of `env`, or None (no token) when it is unset or empty."""
    return os.environ.get(env) or None


class JSONHandler(BaseHTTPRequestHandler):
    """Base of the servers' handlers; make_server sets `max_body` (bytes) and `token` per server."""

    max_body: int = int(DEFAULT_MAX_REQUEST_MB * 2**20)
    token: str | None = None
    timeout = IDLE_TIMEOUT_S  # socketserver applies it to every connection's socket

    def authorized(self) -> bool:
        if self.token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def read_json(self) -> object:
        """The request's JSON body, or RequestError (400 bad length or JSON, 413 too large)."""
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise RequestError(400, f"Content-Length must be a whole number of bytes, got {length!r}")
        if int(length) > self.max_body:
            raise RequestError(
                413,
                f"the request has {int(length)} bytes; this server takes at most {self.max_body} bytes "
                "(send fewer videos per request)",
            )
        try:
            return json.loads(self.rfile.read(int(length)))
        except ValueError as err:
            raise RequestError(400, f"the body is not JSON ({str(err).splitlines()[0]})") from None

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError) as err:  # the client hung up or went quiet: not the server's fault
            logging.getLogger("vidpost").warning(
                "%s: connection closed (%s)", self.client_address[0], type(err).__name__
            )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # send_json logs one line per request, with what was done

    def log_message(self, format: str, *args) -> None:  # http.server's own notes, e.g. a bad request line
        logging.getLogger("vidpost").warning("%s %s", self.address_string(), format % args)


def send_json(handler: BaseHTTPRequestHandler, code: int, payload: dict, note: str, log: logging.Logger) -> None:
    body = json.dumps(payload).encode()
    # logged before the reply is sent, so that a client holding the reply can rely on the line being there
    log.info("%s %s %s %d %s", handler.address_string(), handler.command, handler.path, code, note)
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
