"""The JSON reply that vidpost's small stdlib HTTP servers (rewards, enhancers) send."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler


def send_json(handler: BaseHTTPRequestHandler, code: int, payload: dict, note: str, log: logging.Logger) -> None:
    body = json.dumps(payload).encode()
    # logged before the reply is sent, so that a client holding the reply can rely on the line being there
    log.info("%s %s %s %d %s", handler.address_string(), handler.command, handler.path, code, note)
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
