"""Rewards computed by another process over HTTP, and a server for vidpost's own rewards.

Large learned rewards (HPSv3, VideoAlign, a VLM judge) need their own GPU, environment and weights, so
they run as a server and vidpost calls them like any other reward family. The protocol is plain JSON
(docs/reward_protocol.md has a worked example):

    POST {base_url}/score
      {"rewards": [name, ...], "prompts": [str] * B,
       "videos": {"dtype": "uint8", "shape": [B, T, H, W, 3], "data": base64 of the C-order bytes}}
      -> 200 {"scores": {name: [float] * B, ...}}
    GET {base_url}/rewards
      -> 200 {"rewards": [name, ...]}
    Any error -> 4xx (the request is wrong; not retried) or 5xx (the server failed; retried),
      with {"error": "one line"}.

Videos travel as uint8, as a saved clip would be: a quarter of the bytes of float32, and a remote reward
scores exactly what `vidpost score` would read back from disk.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import ThreadingHTTPServer

import numpy as np

from vidpost.data.video_io import to_float, to_uint8
from vidpost.errors import VidpostError, first_line
from vidpost.jsonhttp import DEFAULT_MAX_REQUEST_MB, JSONHandler, RequestError, send_json, server_token
from vidpost.rewards.registry import REWARDS, check_reward_names, compute_rewards, register_family

log = logging.getLogger("vidpost")


def encode_videos(videos: np.ndarray) -> dict:
    """Float videos (B, T, H, W, 3) in [0, 1] -> the protocol's uint8 `videos` object."""
    frames = np.ascontiguousarray(to_uint8(np.asarray(videos)))
    return {"dtype": "uint8", "shape": list(frames.shape), "data": base64.b64encode(frames.data).decode("ascii")}


def decode_videos(wire: object) -> np.ndarray:
    """The protocol's `videos` object -> float32 (B, T, H, W, 3) in [0, 1]; a malformed one is a VidpostError."""
    if not isinstance(wire, dict) or wire.get("dtype") != "uint8":
        raise VidpostError("videos must be an object with dtype 'uint8'")
    shape, data = wire.get("shape"), wire.get("data")
    if not (
        isinstance(shape, list)
        and len(shape) == 5
        and all(isinstance(s, int) and s >= 0 for s in shape)
        and shape[-1] == 3
    ):
        raise VidpostError(f"videos.shape must be [B, T, H, W, 3], got {shape!r}")
    if not isinstance(data, str):
        raise VidpostError("videos.data must be a base64 string")
    raw = base64.b64decode(data, validate=True)
    if len(raw) != math.prod(shape):
        raise VidpostError(f"videos.data holds {len(raw)} bytes but shape {shape} needs {math.prod(shape)}")
    return to_float(np.frombuffer(raw, np.uint8).reshape(shape))


def _server_error(err: urllib.error.HTTPError) -> str:
    """The `error` of a 4xx/5xx reply, or its status text when the body is not the protocol's."""
    try:
        return str(json.loads(err.read())["error"]).strip()
    except (ValueError, KeyError, TypeError):
        return err.reason


def _unreachable(err: BaseException | str) -> str:
    """'connection refused', 'timed out', ... from a socket error (or URLError's string reason)."""
    return f"is not reachable ({(err.strerror or str(err)).lower() if isinstance(err, OSError) else err})"


class RemoteReward:
    """A reward family served over HTTP: `(videos (B, T, H, W, 3) in [0, 1], prompts) -> {name: (B,)}`.

    It asks for `names`, or for every reward the server lists when `names` is None. Connection errors,
    timeouts and 5xx replies are retried `retries` times, waiting backoff_s, 2 backoff_s, ... in between.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        names: Sequence[str] | None = None,
        token_env: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise VidpostError(f"reward server url {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token_env = token_env  # the variable holding the server's bearer token, read per request (never kept)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.names = list(names) if names is not None else None

    def list_rewards(self) -> list[str]:
        names = self._request("GET", "/rewards").get("rewards")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise VidpostError(f"reward server {self.url} sent no 'rewards' list of names")
        return names

    def __call__(self, videos: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        if self.names is None:
            self.names = self.list_rewards()
        return self.score(self.names, videos, prompts)

    def score(self, names: Sequence[str], videos: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """The named rewards of videos against prompts, each checked to be B finite floats."""
        batch = len(videos)
        body = {"rewards": list(names), "prompts": list(prompts), "videos": encode_videos(videos)}
        scores = self._request("POST", "/score", body).get("scores")
        if not isinstance(scores, dict):
            raise VidpostError(f"reward server {self.url} sent no 'scores' object")
        results = {}
        for name in names:
            if name not in scores:
                raise VidpostError(f"reward {name!r}: server {self.url} sent no scores for it")
            try:
                values = np.asarray(scores[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise VidpostError(f"reward {name!r}: server {self.url} sent non-numeric scores") from None
            if values.shape != (batch,):
                raise VidpostError(
                    f"reward {name!r}: server {self.url} sent scores of shape {values.shape} for {batch} videos"
                )
            if not np.isfinite(values).all():
                raise VidpostError(f"reward {name!r}: server {self.url} sent non-finite scores")
            results[name] = values
        return results

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        token = server_token(self.token_env) if self.token_env else None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    text = reply.read()
                break
            except urllib.error.HTTPError as err:
                if err.code < 500:
                    raise VidpostError(f"reward server {self.url}: {_server_error(err)}") from None
                failure = f"failed (HTTP {err.code}: {_server_error(err)})"
            except urllib.error.URLError as err:  # connection refused, unknown host, connect timeout
                failure = _unreachable(err.reason)
            except (OSError, http.client.HTTPException) as err:  # read timeout, connection reset or cut
                failure = _unreachable(err)
            log.debug("reward server %s %s (attempt %d of %d)", self.url, failure, attempt + 1, attempts)
        else:
            raise VidpostError(f"reward server {self.url} {failure} after {attempts} attempt{'s' * (attempts > 1)}")
        try:
            reply = json.loads(text)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise VidpostError(f"reward server {self.url} sent no JSON object for {method} {path}")
        return reply


def register_remote(url: str, names: Sequence[str] | None = None, **client_kw) -> list[str]:
    """Register the rewards `names` (default: all the server lists) served at `url` as family `remote:{url}`."""
    family = f"remote:{url}"
    names = list(names) if names is not None else RemoteReward(url, **client_kw).list_rewards()
    names = list(dict.fromkeys([*(r for r, f in REWARDS.items() if f == family), *names]))  # keep earlier ones
    register_family(family, RemoteReward(url, names=names, **client_kw), names)
    return names


class _Handler(JSONHandler):
    served: Sequence[str] | None  # set per server by make_server; None serves every registered reward

    def _names(self) -> list[str]:
        return list(REWARDS) if self.served is None else list(self.served)

    def _send(self, code: int, payload: dict, note: str) -> None:
        send_json(self, code, payload, note, log)

    def do_GET(self) -> None:
        if not self.authorized():
            self._send(401, {"error": "this server needs Authorization: Bearer TOKEN"}, "unauthorized")
        elif self.path.rstrip("/") == "/rewards":
            self._send(200, {"rewards": self._names()}, "")
        else:
            self._send(404, {"error": f"no endpoint {self.path}; use GET /rewards or POST /score"}, "")

    def do_POST(self) -> None:
        if not self.authorized():
            self._send(401, {"error": "this server needs Authorization: Bearer TOKEN"}, "unauthorized")
            return
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"no endpoint {self.path}; use GET /rewards or POST /score"}, "")
            return
        start = time.perf_counter()
        try:
            names, prompts, videos = _parse(self.read_json(), self._names())
            scores = compute_rewards(names, videos, prompts)
        except RequestError as err:  # a bad length, too large, not JSON
            self._send(err.code, {"error": str(err)}, str(err))
            return
        except (VidpostError, ValueError) as err:  # the request is wrong (base64 errors are ValueErrors)
            self._send(400, {"error": first_line(err)}, first_line(err))
            return
        except (ConnectionError, TimeoutError):  # the client hung up or went quiet: JSONHandler.handle logs it
            raise
        except Exception as err:  # a reward crashed: the client may retry
            log.exception("reward computation failed")
            self._send(500, {"error": first_line(err)}, first_line(err))
            return
        note = f"{len(prompts)} videos, {','.join(names)} in {time.perf_counter() - start:.2f} s"
        self._send(200, {"scores": {n: s.tolist() for n, s in scores.items()}}, note)


def _parse(request: object, served: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(reward names, prompts, float videos) of a /score request, each checked against the protocol."""
    if not isinstance(request, dict):
        raise VidpostError("the request must be a JSON object with rewards, prompts and videos")
    names, prompts = request.get("rewards"), request.get("prompts")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise VidpostError("rewards must be a non-empty list of reward names")
    unknown = [n for n in names if n not in served]
    if unknown:
        raise VidpostError(f"unknown reward {unknown[0]!r}; served: {', '.join(served)}")
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
        raise VidpostError("prompts must be a non-empty list of strings (one per video)")
    videos = decode_videos(request.get("videos"))
    if len(videos) != len(prompts):
        raise VidpostError(f"{len(videos)} videos but {len(prompts)} prompts")
    return names, prompts, videos


def make_server(
    host: str,
    port: int,
    reward_names: Sequence[str] | None = None,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    token: str | None = None,
) -> ThreadingHTTPServer:
    """A threaded HTTP server (not yet running) of `reward_names`, default every registered reward; requests
    above max_request_mb are refused, and with a token every request must carry it (jsonhttp)."""
    if reward_names is not None:
        check_reward_names(reward_names)
    handler = type(
        "RewardHandler",
        (_Handler,),
        {
            "served": None if reward_names is None else list(reward_names),
            "max_body": int(max_request_mb * 2**20),
            "token": token,
        },
    )
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise VidpostError(f"cannot serve rewards on {host}:{port} ({err.strerror or err})") from None


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    reward_names: Sequence[str] | None = None,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    token: str | None = None,
) -> None:
    """Serve rewards until Ctrl-C."""
    with make_server(host, port, reward_names, max_request_mb, token) as server:
        served = ", ".join(reward_names or REWARDS)
        guard = "a bearer token required" if token else "no token: keep it to trusted networks"
        print(f"serving rewards {served} at http://{host}:{server.server_port} ({guard}; Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
