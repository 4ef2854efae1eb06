"""A stand-in Hugging Face Hub on 127.0.0.1, and two Hubs that do not answer, for tests that never reach the internet.

`StandInHub` answers HEAD and GET on `/<org>/<repo>/resolve/<revision>/<file>` with the headers
huggingface_hub reads (`X-Repo-Commit`, `ETag`, `Content-Length`), and 404 with `X-Error-Code` as the
Hub does; it records every request. Point a job at it with `HF_ENDPOINT`.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import timm
import torch
from safetensors.torch import save

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


def timm_weights(backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A backbone's full timm state dict (classifier included), as the Hub holds it, with values of our own."""
    torch.manual_seed(seed)
    model = timm.create_model(backbone, pretrained=False)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.05)
    return {name: tensor.clone().contiguous() for name, tensor in model.state_dict().items()}


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class StandInHub:
    files: dict[tuple[str, str], bytes]  # (repo id, file name) -> content
    commit: str = COMMIT
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StandInHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self) -> list[str]:
        return [request.path for request in self.requests if request.method == "GET"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                hub.requests.append(Request(self.command, self.path, self.headers.get("Authorization")))
                match = RESOLVE.match(self.path.split("?")[0])
                content = hub.files.get((match["repo"], match["file"])) if match else None
                if match and match["revision"] not in ("main", hub.commit):
                    return self._error(404, "RevisionNotFound")
                if content is None:
                    known = match and any(repo == match["repo"] for repo, _ in hub.files)
                    return self._error(404, "EntryNotFound" if known else "RepoNotFound")
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def _error(self, status: int, code: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def serve_weights(
    backbone_repo: str, weights: dict[str, torch.Tensor], filename: str = "model.safetensors"
) -> StandInHub:
    """A Hub holding `weights` as timm's layout of `backbone_repo` (safetensors unless told otherwise)."""
    if filename.endswith(".safetensors"):
        content = save(weights)
    else:
        import io

        buffer = io.BytesIO()
        torch.save(weights, buffer)
        content = buffer.getvalue()
    return StandInHub({(backbone_repo, filename): content})


class SilentHub:
    """Accepts connections and never answers: a Hub behind a black-holing firewall or a hung proxy."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)  # kept open, never read or answered

    def __enter__(self) -> SilentHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


def refusing_endpoint() -> str:
    """An address where nothing listens: connections are refused at once."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
