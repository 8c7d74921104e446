"""Remote rewards on loopback: the server gives exactly the local scores, and every failure is one clear line."""

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from vidpost.cli import build_parser, cmd_reward_serve
from vidpost.data.video_io import to_float
from vidpost.errors import VidpostError
from vidpost.rewards import remote
from vidpost.rewards.registry import FAMILIES, REWARDS, compute_rewards
from vidpost.rewards.remote import RemoteReward, encode_videos, make_server, register_remote
from vidpost.rewards.shapeworld import REWARD_KEYS
from vidpost.world.config import DatasetConfig
from vidpost.world.dataset import make_clip


@contextmanager
def running(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def url() -> Iterator[str]:
    with running(make_server("127.0.0.1", 0)) as base:
        yield base


@pytest.fixture(scope="module")
def clips() -> tuple[np.ndarray, list[str]]:
    """Three real ShapeWorld clips (float, as a trainer holds them) and their canonical captions."""
    cfg = DatasetConfig(n=3)
    made = [make_clip(cfg, i) for i in range(cfg.n)]
    return to_float(np.stack([video for video, _ in made])), [meta["canonical"] for _, meta in made]


@pytest.fixture
def clean_registry() -> Iterator[None]:
    families, rewards = dict(FAMILIES), dict(REWARDS)
    yield
    FAMILIES.clear()
    FAMILIES.update(families)
    REWARDS.clear()
    REWARDS.update(rewards)


def stub_server(scores: Callable[[dict], dict], code: int = 200) -> tuple[ThreadingHTTPServer, list[dict]]:
    """A server answering every POST with `code` and {"scores": scores(request)}; it records the requests."""
    seen: list[dict] = []

    class Stub(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(request)
            body = json.dumps({"scores": scores(request)} if code == 200 else {"error": "model crashed"}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Stub), seen


@contextmanager
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound but not listening, and held so that no other process can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/score", data=body, method="POST")) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_remote_scores_equal_local_scores(url: str, clips) -> None:
    videos, prompts = clips
    local = compute_rewards([*REWARD_KEYS, "flicker"], videos, prompts)
    scores = RemoteReward(url, names=[*REWARD_KEYS, "flicker"])(videos, prompts)
    assert list(scores) == [*REWARD_KEYS, "flicker"]
    for name, values in local.items():
        assert scores[name].dtype == np.float64 and scores[name].shape == (3,)
        np.testing.assert_array_equal(scores[name], values)
    assert local["total"].min() > 0.99  # real clips, not a degenerate all-zero comparison


def test_names_default_to_what_the_server_lists(clips) -> None:
    videos, prompts = clips
    with running(make_server("127.0.0.1", 0, ["total", "success"])) as base:
        client = RemoteReward(base)
        assert client.list_rewards() == ["total", "success"]
        assert list(client(videos, prompts)) == ["total", "success"]


def test_unknown_reward_is_the_servers_400(url: str, clips) -> None:
    videos, prompts = clips
    with pytest.raises(VidpostError, match=r"unknown reward 'hpsv9'"):
        RemoteReward(url, names=["total", "hpsv9"])(videos, prompts)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "the body is not JSON (Expecting property name"),
        (
            json.dumps(
                {"rewards": ["total"], "prompts": ["a", "b"], "videos": encode_videos(np.zeros((1, 3, 4, 4, 3)))}
            ),
            "1 videos but 2 prompts",
        ),
        (
            json.dumps(
                {
                    "rewards": ["total"],
                    "prompts": ["a"],
                    "videos": {**encode_videos(np.zeros((1, 3, 4, 4, 3))), "shape": [1, 3, 4, 5, 3]},
                }
            ),
            "holds 144 bytes but shape [1, 3, 4, 5, 3] needs 180",
        ),
        (
            json.dumps({"rewards": ["total"], "prompts": ["a"], "videos": {"dtype": "uint8", "shape": [1, 4, 4, 3]}}),
            "videos.shape must be [B, T, H, W, 3]",
        ),
        (
            json.dumps(
                {
                    "rewards": ["total"],
                    "prompts": ["no such caption"],
                    "videos": encode_videos(np.zeros((1, 3, 16, 16, 3))),
                }
            ),
            "no such caption",
        ),
        (
            json.dumps({"rewards": ["total"], "prompts": [], "videos": encode_videos(np.zeros((0, 3, 16, 16, 3)))}),
            "prompts must be a non-empty list",
        ),
    ],
)
def test_bad_requests_get_a_one_line_400(url: str, body, error: str) -> None:
    code, reply = post(url, body if isinstance(body, bytes) else body.encode())
    assert code == 400
    assert error in reply["error"] and "\n" not in reply["error"]


def test_each_request_logs_one_line(url: str, clips, caplog: pytest.LogCaptureFixture) -> None:
    videos, prompts = clips
    with caplog.at_level("INFO", logger="vidpost"):
        RemoteReward(url, names=["total"])(videos, prompts)
    lines = [r.getMessage() for r in caplog.records if "/score" in r.getMessage()]
    assert len(lines) == 1 and "200 3 videos, total in" in lines[0]


def test_server_down_is_not_reachable_after_the_retries(clips, monkeypatch: pytest.MonkeyPatch) -> None:
    videos, prompts = clips
    calls = []
    urlopen = urllib.request.urlopen
    monkeypatch.setattr(remote.urllib.request, "urlopen", lambda *a, **kw: calls.append(1) or urlopen(*a, **kw))
    with closed_port() as port, pytest.raises(VidpostError) as err:
        base = f"http://127.0.0.1:{port}"
        RemoteReward(base, retries=1, backoff_s=0, names=["total"])(videos, prompts)
    assert str(err.value) == f"reward server {base} is not reachable (connection refused) after 2 attempts"
    assert len(calls) == 2


def test_a_server_that_never_answers_times_out_after_the_retries(clips) -> None:
    videos, prompts = clips
    release = threading.Event()

    class Silent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # holds the request unanswered until the client has given up
            release.wait(timeout=600)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    with running(server) as base:
        try:
            with pytest.raises(VidpostError) as err:
                RemoteReward(base, timeout_s=0.2, retries=1, backoff_s=0, names=["total"])(videos, prompts)
        finally:
            release.set()
    assert str(err.value) == f"reward server {base} is not reachable (timed out) after 2 attempts"


def test_server_errors_are_retried_then_reported(clips) -> None:
    videos, prompts = clips
    server, seen = stub_server(lambda request: {}, code=500)
    with running(server) as base, pytest.raises(VidpostError, match=r"failed \(HTTP 500: model crashed\) after 2"):
        RemoteReward(base, retries=1, backoff_s=0, names=["total"])(videos, prompts)
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("scores", "error"),
    [
        ({"judge": [0.5]}, "sent scores of shape (1,) for 3 videos"),
        ({"judge": [0.5, float("nan"), 0.1]}, "non-finite"),
        ({"judge": ["good", "bad", "ugly"]}, "non-numeric"),
        ({"other": [0.5, 0.5, 0.5]}, "sent no scores for it"),
    ],
)
def test_a_malformed_response_names_the_reward(clips, scores: dict, error: str) -> None:
    videos, prompts = clips
    server, _ = stub_server(lambda request: scores)
    with running(server) as base, pytest.raises(VidpostError, match=r"reward 'judge'") as err:
        RemoteReward(base, names=["judge"])(videos, prompts)
    assert error in str(err.value)


def test_register_remote_makes_the_names_usable(clips, clean_registry) -> None:
    videos, prompts = clips
    server, seen = stub_server(lambda request: {n: [0.25] * len(request["prompts"]) for n in request["rewards"]})
    with running(server) as base:
        assert register_remote(base, ["judge"], retries=0) == ["judge"]
        assert register_remote(base, ["judge_motion"]) == ["judge", "judge_motion"]  # adds, keeps the first
        scores = compute_rewards(["judge_motion", "judge", "flicker"], videos, prompts)
    assert REWARDS["judge"] == REWARDS["judge_motion"] == f"remote:{base}"
    np.testing.assert_array_equal(scores["judge"], [0.25] * 3)
    np.testing.assert_array_equal(scores["flicker"], compute_rewards(["flicker"], videos, prompts)["flicker"])
    assert len(seen) == 1 and seen[0]["rewards"] == ["judge", "judge_motion"]  # one request for the family
    assert seen[0]["prompts"] == prompts and seen[0]["videos"]["shape"] == list(videos.shape)


def test_cli_reward_serve_parses() -> None:
    args = build_parser().parse_args(["reward", "serve", "--port", "0", "--rewards", "total,flicker"])
    assert (args.func, args.host, args.port, args.rewards) == (cmd_reward_serve, "127.0.0.1", 0, "total,flicker")


def test_a_taken_port_is_one_line(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(VidpostError, match=f"cannot serve rewards on 127.0.0.1:{port}"):
        make_server("127.0.0.1", port)


def test_a_url_without_scheme_is_one_line() -> None:
    with pytest.raises(VidpostError, match=r"'gpu-box:8766' must start with http://"):
        RemoteReward("gpu-box:8766")


def _raw(port: int, request: bytes) -> bytes:
    """Send raw bytes to the server and return its whole reply (it closes the connection after answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def test_lengths_are_checked_before_anything_is_read_or_allocated() -> None:
    with running(make_server("127.0.0.1", 0, max_request_mb=0.001)) as base:
        port = int(base.rsplit(":", 1)[1])
        huge = _raw(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000000\r\n\r\n")
        assert huge.startswith(b"HTTP/1.0 413") and b"at most 1048 bytes" in huge
        for length in (b"-5", b"abc"):
            bad = _raw(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n")
            assert bad.startswith(b"HTTP/1.0 400") and b"Content-Length must be a whole number" in bad
        missing = _raw(port, b"POST /score HTTP/1.1\r\nHost: x\r\n\r\n")
        assert missing.startswith(b"HTTP/1.0 400")


def test_a_client_that_hangs_up_is_one_log_line(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.setattr(remote._Handler, "timeout", 0.2)  # an idle connection is closed
    with caplog.at_level("WARNING", logger="vidpost"), running(make_server("127.0.0.1", 0)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:  # says it sends 100 bytes, sends 10, waits
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            assert sock.recv(1024) == b""  # closed by the server after its idle timeout
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "timed out" in line.lower()], lines  # one line, from the handler's timeout
    assert "Traceback" not in caplog.text


def test_a_token_guards_the_server_and_the_client_sends_it(clips, monkeypatch) -> None:
    videos, prompts = clips
    monkeypatch.setenv("VIDPOST_TEST_TOKEN", "s3cret")
    with running(make_server("127.0.0.1", 0, ["total"], token="s3cret")) as base:
        with pytest.raises(VidpostError, match="this server needs Authorization: Bearer TOKEN"):
            RemoteReward(base, names=["total"])(videos, prompts)
        scores = RemoteReward(base, names=["total"], token_env="VIDPOST_TEST_TOKEN")(videos, prompts)
        assert scores["total"].min() > 0.99
