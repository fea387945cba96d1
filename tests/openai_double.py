"""HTTP test doubles around the OpenAI chat API (tests only, never a backend users can pick).

- `GeometryServer`: an OpenAI-compatible endpoint whose "model" finds the white square in each
  image it receives and answers its box in the pixels of the image as received. It counts visual
  tokens the way Qwen2.5-VL does (one per 28x28 cell) and can cap image sizes like a server
  configured with a smaller max_pixels, so the start-up probe and the coordinate round trip are
  tested against known geometry.
- `FaultProxy`: sits in front of a real server and answers chosen requests with 503/429 (with
  Retry-After).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

CELL = 28


def _serve(handler_class, owner) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    server.owner = owner  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _reply(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


def decode_data_url(url: str) -> np.ndarray:
    import cv2

    data = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


class GeometryServer:
    def __init__(self, model: str = "double", cap_pixels: int | None = None, unconstrained: str | None = None,
                 max_images: int | None = None, context_length: int | None = None):
        """`unconstrained`: answer this text to every request, as a server that ignores
        `response_format` might; `context_length`: the `max_model_len` `GET /models` reports."""
        self.model, self.cap_pixels, self.unconstrained = model, cap_pixels, unconstrained
        self.context_length = context_length
        self.max_images = max_images  # more images per prompt are refused with a 400, as vLLM does
        self.received_sizes: list[tuple[int, int]] = []  # (h, w) of every image of every completion
        self._server = _serve(_GeometryHandler, self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def complete(self, body: dict) -> dict:
        images, text = [], ""
        for message in body["messages"]:
            content = message["content"]
            for part in ([{"type": "text", "text": content}] if isinstance(content, str) else content):
                if part["type"] == "image_url":
                    images.append(self._as_served(decode_data_url(part["image_url"]["url"])))
                else:
                    text += part["text"]
        self.received_sizes += [im.shape[:2] for im in images]
        tokens = sum((h // CELL) * (w // CELL) for h, w in (im.shape[:2] for im in images)) + len(text)
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        properties = schema.get("properties", {})
        if "targets" in properties:
            label = properties["targets"]["items"]["properties"]["label"].get("enum", ["square"])[0]
            targets = []
            relative = "qwen3" in self.model.lower()  # Qwen3-VL answers 0-1000 relative coordinates
            for i, im in enumerate(images):
                box = white_square_box(im)
                if box is not None and relative:
                    h, w = im.shape[:2]
                    box = [round(box[0] * 1000 / w), round(box[1] * 1000 / h), round(box[2] * 1000 / w),
                           round(box[3] * 1000 / h)]
                if box is not None:
                    targets.append({"image": i + 1, "label": label, "phrase": "the square", "box": box})
            answer = {"explanation": "white squares", "targets": targets}
            if "absent" in properties:
                answer["absent"] = []
        else:
            answer = {"ok": True}
        content = json.dumps(answer) if self.unconstrained is None else self.unconstrained
        return {"id": "x", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1}}

    def _as_served(self, image: np.ndarray) -> np.ndarray:
        """A server with a smaller max_pixels shrinks the image (to multiples of 28) before the model."""
        import cv2

        h, w = image.shape[:2]
        if self.cap_pixels is None or h * w <= self.cap_pixels:
            return image
        scale = math.sqrt(self.cap_pixels / (h * w))
        nh, nw = max(CELL, int(h * scale) // CELL * CELL), max(CELL, int(w * scale) // CELL * CELL)
        return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)


def white_square_box(image: np.ndarray) -> list[int] | None:
    ys, xs = np.nonzero((image > 240).all(axis=2))
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


class _GeometryHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        card = {"id": owner.model, "object": "model", "root": None}
        if owner.context_length is not None:
            card["max_model_len"] = owner.context_length
        _reply(self, 200, {"object": "list", "data": [card]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        owner = self.server.owner
        images = sum(1 for m in body["messages"] if not isinstance(m["content"], str)
                     for p in m["content"] if p["type"] == "image_url")
        if owner.max_images is not None and images > owner.max_images:
            _reply(self, 400, {"error": {"message": f"At most {owner.max_images} image(s) may be provided in one "
                                                    "prompt.", "type": "BadRequestError", "code": 400}})
            return
        _reply(self, 200, owner.complete(body))


class FaultProxy:
    """Forwards to `upstream`, but answers the first chat completions with the statuses in `faults`
    (429 with Retry-After: 1), as an overloaded server would."""

    def __init__(self, upstream: str, faults: list[int] = ()):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.faults = list(faults)
        self.injected = 0
        self._lock = threading.Lock()
        self._server = _serve(_ProxyHandler, self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fault(self, path: str) -> int | None:
        """The status to answer this request with, or None to forward it."""
        with self._lock:
            if path.endswith("/chat/completions") and self.faults:
                self.injected += 1
                return self.faults.pop(0)
            return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        self._handle(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _handle(self, body: bytes) -> None:
        proxy: FaultProxy = self.server.owner
        status = proxy.fault(self.path)
        if status is not None:
            headers = {"Retry-After": "1"} if status == 429 else {}
            _reply(self, status, {"error": {"message": f"injected {status}", "type": "test"}}, headers)
            return
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=600)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()
