"""Reasoning on a serving engine: vLLM, SGLang or any OpenAI-compatible chat endpoint (`--server URL`).

Each step goes out as one chat completion: the same multi-image chat the in-process path builds,
images as base64 data URLs, the answer constrained by the step's JSON schema through
`response_format` (vLLM and SGLang honour it), greedy, with `logprobs` for per-target confidence.
Requests run concurrently; the openai client retries timeouts, 429s (honouring `Retry-After`)
and 5xx with backoff, after which the step fails alone.

Pixel coordinates (Qwen2.5-VL) refer to the image as the server's processor resized it, which
the client cannot see. So each image is sent already at the size the model's resize rule maps
to itself (sides multiples of patch x merge, pixels within the min/max), and the size is said in
the prompt. At start a probe proves the server keeps such sizes: it sends the smallest and the
largest size this run can send and compares the visual tokens the server counted with the
tokens those sizes make.

The answer's token budget is kept within the served model's context (`max_model_len`, which
vLLM and SGLang report): vLLM refuses a `max_tokens` over it, SGLang one that does not fit beside
the prompt. An upper bound of the prompt's tokens (its text in UTF-8 bytes, the images' visual
tokens) is taken off; an answer cut there is kept and marked truncated, like any other.
"""

from __future__ import annotations

import base64
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from autolabel.backends.base import BackendOptions
from autolabel.backends.reasoning import Generated, ImageNotAccepted, Reasoner, ReasonStep, token_budget
from autolabel.backends.vlm_coords import FAMILY_FRAMES, CoordinateFrame, ImageFrame, coordinate_frame
from autolabel.errors import AutolabelError

DEFAULT_MAX_IMAGE_PIXELS = 28 * 28 * 1280  # 1280 visual tokens per image for Qwen2.5-VL
QWEN25_IMAGE_RULE = {"factor": 28, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                "additionalProperties": False}
RETRIED_STATUSES = {408, 409, 429} | set(range(500, 600))
CHAT_TEMPLATE_TOKENS = 16  # per message and per image: role markers, vision start/end tokens
MIN_ANSWER_TOKENS = 64     # below this the prompt bound is too coarse to cut by; the server decides


@dataclass(frozen=True)
class ServedModel:
    """What `GET /models` says of a served model (vLLM and SGLang fill both; others may not)."""

    root: str | None            # the path or hub id the server loaded
    context_length: int | None  # `max_model_len`: prompt and answer tokens together


@dataclass(frozen=True)
class ResizeRule:
    """Qwen's smart_resize settings: sides become multiples of `factor`, pixels stay in [min, max]."""

    factor: int
    min_pixels: int
    max_pixels: int

    def fixed_point(self, height: int, width: int) -> tuple[int, int]:
        """The size the rule maps this image to; the rule maps that size to itself."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels)

    def tokens(self, height: int, width: int) -> int:
        """Visual tokens of an image at a fixed-point size (one per factor x factor cell)."""
        return (height // self.factor) * (width // self.factor)

    def tokens_at_most(self, height: int, width: int) -> int:
        """Visual tokens of an image of any size within max_pixels, rounded up (no resize needed)."""
        f = self.factor
        return max(math.ceil(height / f) * math.ceil(width / f), math.ceil(self.min_pixels / (f * f)))

    def probe_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The smallest and the largest fixed-point sizes this rule produces (nearly square)."""
        f = self.factor
        side = f * math.ceil(math.sqrt(self.min_pixels) / f)
        cells = self.max_pixels // (f * f)
        rows = max(1, math.isqrt(cells))
        return (side, side), (rows * f, max(1, cells // rows) * f)


class ServerReasoner(Reasoner):
    def __init__(self, options: BackendOptions):
        if not options.server:
            raise AutolabelError("--server: give the server's base URL, e.g. http://gpu-box:8000/v1")
        if not options.model:
            raise AutolabelError("--server needs --model: the name the server serves the model under "
                                 "(`autolabel doctor --server URL` lists them)")
        self.options = options
        self.url = options.server.rstrip("/")
        self.model = options.model
        extra = options.extra
        self._api_key = api_key(options)
        self.retried_responses = 0
        # tokens the server counted for this run's answers (start-up probes aside); cached prompt
        # tokens only where the server reports them (vLLM: --enable-prompt-tokens-details)
        self.usage = {"server_prompt_tokens": 0, "server_completion_tokens": 0}
        self._lock = threading.Lock()
        self.client = make_client(options, on_response=self._count_retried)
        self.request_options: dict[str, Any] = {"temperature": 0, **extra.get("request", {})}
        self.image_format = str(extra.get("image_format", "png")).lower()
        if self.image_format not in ("png", "jpeg"):
            raise AutolabelError(f"--backend-option image_format={self.image_format}: use png or jpeg")
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="server")

        served = self._served_models()[self.model]
        self.context_length = served.context_length
        model_type, image_config, where = local_model_config(self.model, served.root)
        self.model_type = model_type
        self.frame = coordinate_frame(model_type or _guess_family(self.model, served.root), extra.get("coordinates"))
        self.rule = _resize_rule(image_config, int(extra.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)))
        self.config_source = where
        self.structured_output, self.logprobs, self.size_check = self._probe()

    # -- provenance ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"model": self.model, "server": redact_url(self.url), "model_type": self.model_type,
                "model_config": self.config_source, "coordinates": self.frame.value,
                "image_rule": {"factor": self.rule.factor, "min_pixels": self.rule.min_pixels,
                               "max_pixels": self.rule.max_pixels},
                "image_size_check": self.size_check, "structured_output": self.structured_output,
                "logprobs": self.logprobs, "context_length": self.context_length,
                "confidence": "vlm_tokens x mask" if self.logprobs else "mask only (the server returns no logprobs)",
                "concurrency": self.options.concurrency}

    def stats(self) -> dict[str, Any]:
        return {"server_retried_responses": self.retried_responses, **self.usage}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- frames ----------------------------------------------------------------------------
    def frames(self, images: list[np.ndarray]) -> list[ImageFrame]:
        """Pixel frames: the fixed-point size the image is sent at. Relative ones need no resize."""
        out = []
        for k, im in enumerate(images):
            h, w = im.shape[:2]
            try:
                sent = self.rule.fixed_point(h, w) if self.frame is CoordinateFrame.PIXELS else (h, w)
            except ValueError as e:  # Qwen's rule refuses aspect ratios over 200:1: this group fails alone
                raise ImageNotAccepted(k, f"{w}x{h} pixels, which the model's resize rule does not take: {e}") from None
            out.append(ImageFrame(self.frame, (h, w), sent))
        return out

    def sent_size(self, frame: ImageFrame) -> tuple[int, int]:
        """(h, w) an image goes out at: its frame's size (relative frames: within max_pixels)."""
        h, w = frame.model_input
        if frame.frame is CoordinateFrame.RELATIVE_1000 and h * w > self.rule.max_pixels:
            scale = math.sqrt(self.rule.max_pixels / (h * w))
            h, w = max(1, int(h * scale)), max(1, int(w * scale))
        return h, w

    def image_url(self, image: np.ndarray, frame: ImageFrame) -> str:
        """The image as a data URL, at the size `sent_size` gives."""
        import cv2

        h, w = self.sent_size(frame)
        if (h, w) != image.shape[:2]:
            shrink = h * w < image.shape[0] * image.shape[1]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        bgr = np.ascontiguousarray(image[..., ::-1])
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if self.image_format == "jpeg" else []
        ok, data = cv2.imencode("." + ("jpg" if self.image_format == "jpeg" else "png"), bgr, params)
        if not ok:
            raise RuntimeError(f"could not encode a {w}x{h} image as {self.image_format}")
        return f"data:image/{self.image_format};base64," + base64.b64encode(data.tobytes()).decode("ascii")

    # -- reasoning -------------------------------------------------------------------------
    def reason(self, steps: list[ReasonStep]) -> list[Generated | Exception]:
        if len(steps) == 1:
            return [self._reason_one(steps[0])]
        return list(self._pool.map(self._reason_one, steps))

    def _reason_one(self, step: ReasonStep) -> Generated | Exception:
        try:
            urls = [self.image_url(im, f) for im, f in zip(step.images, step.frames)]
            budget = self.answer_budget(step)
            reply = self._complete(openai_messages(step.chat, urls), step.schema, budget, logprobs=self.logprobs)
            self._count_usage(reply.usage)
            choice = reply.choices[0]
            text = choice.message.content or ""
            ends, logprobs = token_offsets(text, choice.logprobs)
            return Generated(text, ends, logprobs, cut_at=budget if choice.finish_reason == "length" else None)
        except Exception as e:  # noqa: BLE001 - this step fails alone; the message names the server's reason
            return RuntimeError(self._redact(f"server {redact_url(self.url)}: {_describe(e)}"))

    def answer_budget(self, step: ReasonStep) -> int:
        """`max_tokens` for a step: its token budget, within what the server's context leaves."""
        budget = token_budget(step, self.options.max_new_tokens)
        if self.context_length is None:
            return budget
        room = self.context_length - self.prompt_tokens_at_most(step)
        return min(budget, room if room >= MIN_ANSWER_TOKENS else self.context_length)

    def prompt_tokens_at_most(self, step: ReasonStep) -> int:
        """An upper bound of the step's prompt tokens: no token of a byte-level vocabulary is
        shorter than a byte, and the images' visual tokens are rounded up."""
        text = sum(len(part["text"].encode()) for message in step.chat for part in message["content"]
                   if part["type"] == "text")
        visual = sum(self.rule.tokens_at_most(*self.sent_size(frame)) for frame in step.frames)
        return text + visual + CHAT_TEMPLATE_TOKENS * (len(step.chat) + len(step.frames))

    def _complete(self, messages: list[dict], schema: dict | None, max_tokens: int, *, logprobs: bool):
        body: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=max_tokens,
                                    **self.request_options)
        if schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        if logprobs:
            body["logprobs"] = True
        return self.client.chat.completions.create(**body)

    # -- start-up checks -------------------------------------------------------------------
    def _served_models(self) -> dict[str, ServedModel]:
        models = served_models(self.options, self.client)
        if self.model not in models:
            raise AutolabelError(f"--model {self.model!r} is not served by {redact_url(self.url)}; it serves: "
                                 f"{', '.join(sorted(models)) or 'nothing'}")
        return models

    def _probe(self) -> tuple[bool, bool, str]:
        """One tiny two-image request (multi-image, structured output, logprobs) and, for pixel
        frames, one more that proves the server keeps the image sizes this run sends."""
        small, large = self.rule.probe_sizes()
        tile = np.full((*small, 3), 127, np.uint8)
        frame = ImageFrame(CoordinateFrame.PIXELS, small, small)
        url = self.image_url(tile, frame)
        chat = [{"role": "user", "content": [{"type": "text", "text": "Image 1:"}, {"type": "image"},
                                             {"type": "text", "text": "Image 2:"}, {"type": "image"},
                                             {"type": "text", "text": 'Answer {"ok": true}.'}]}]
        first = self._probe_call(openai_messages(chat, [url, url]), PROBE_SCHEMA, 32, logprobs=True)
        choice = first.choices[0]
        try:
            structured = json.loads(choice.message.content or "").get("ok") in (True, False)
        except (ValueError, AttributeError):
            structured = False
        has_logprobs = bool(choice.logprobs and choice.logprobs.content)
        if self.frame is not CoordinateFrame.PIXELS:
            return structured, has_logprobs, "not needed (relative coordinates)"
        big = self.image_url(np.full((*large, 3), 127, np.uint8), ImageFrame(CoordinateFrame.PIXELS, large, large))
        second = self._probe_call(openai_messages(chat, [url, big]), None, 1, logprobs=False)
        if first.usage is None or second.usage is None:
            return structured, has_logprobs, "unverified (the server reports no token usage)"
        counted = second.usage.prompt_tokens - first.usage.prompt_tokens
        expected = self.rule.tokens(*large) - self.rule.tokens(*small)
        if counted != expected:
            raise AutolabelError(
                f"--server {redact_url(self.url)} resizes images: a {large[1]}x{large[0]} image should add "
                f"{expected} visual tokens over a {small[1]}x{small[0]} one, the server counted {counted}, so "
                "pixel coordinates would not map back. Give the server the model's image limits (vLLM: "
                f"--mm-processor-kwargs '{{\"max_pixels\": {self.rule.max_pixels}}}') or lower "
                "--backend-option max_image_pixels=N to what it allows")
        return structured, has_logprobs, f"verified ({small[1]}x{small[0]} and {large[1]}x{large[0]} kept)"

    def _probe_call(self, messages: list[dict], schema: dict | None, max_tokens: int, *, logprobs: bool):
        import openai

        try:
            return self._complete(messages, schema, max_tokens, logprobs=logprobs)
        except openai.BadRequestError as e:
            raise AutolabelError(self._redact(
                f"--server {redact_url(self.url)} refused a two-image request ({_describe(e)}); it must accept "
                "several images per prompt (vLLM: --limit-mm-per-prompt '{\"image\": 8}') and "
                "response_format json_schema")) from None
        except Exception as e:  # noqa: BLE001
            raise AutolabelError(self._redact(f"--server {redact_url(self.url)}: a first request failed: "
                                              f"{_describe(e)}")) from None

    def _count_retried(self, response) -> None:
        if response.status_code in RETRIED_STATUSES:
            with self._lock:
                self.retried_responses += 1

    def _count_usage(self, usage) -> None:
        if usage is None:
            return
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        with self._lock:
            self.usage["server_prompt_tokens"] += usage.prompt_tokens or 0
            self.usage["server_completion_tokens"] += usage.completion_tokens or 0
            if cached is not None:
                self.usage["server_cached_prompt_tokens"] = self.usage.get("server_cached_prompt_tokens", 0) + cached

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def api_key(options: BackendOptions) -> str:
    return os.environ.get(options.api_key_env) or ""


def make_client(options: BackendOptions, on_response=None):
    """An openai client for `--server`: retries with backoff (429 honours Retry-After), a pool
    large enough for the concurrency asked, and the key from the environment (never logged)."""
    import httpx
    import openai

    http = httpx.Client(event_hooks={"response": [on_response]} if on_response else {},
                        limits=httpx.Limits(max_connections=max(options.concurrency * 2, 10)))
    return openai.OpenAI(base_url=options.server.rstrip("/"), api_key=api_key(options) or "EMPTY", http_client=http,
                         timeout=float(options.extra.get("timeout", 600)),
                         max_retries=int(options.extra.get("retries", 5)))


def served_models(options: BackendOptions, client=None) -> dict[str, ServedModel]:
    """Every model the server serves, by id; unreachable or a refused key is one line (exit 2)."""
    import openai

    client = client or make_client(options)
    url, key = redact_url(options.server.rstrip("/")), api_key(options)
    try:
        return {m.id: ServedModel(getattr(m, "root", None), getattr(m, "max_model_len", None))
                for m in client.with_options(max_retries=1, timeout=15).models.list()}
    except openai.AuthenticationError:
        env = options.api_key_env
        raise AutolabelError(f"--server {url} refused the API key "
                             f"({'from $' + env if key else '$' + env + ' is not set'})") from None
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, TLS, not an OpenAI API: one line
        message = f"--server {url}: cannot list its models (GET /models): {_describe(e)}"
        raise AutolabelError(message.replace(key, "***") if key else message) from None


def openai_messages(chat: list[dict], image_urls: list[str]) -> list[dict]:
    """The in-process chat (image placeholders in order) as OpenAI chat-completion messages."""
    urls = iter(image_urls)
    out = []
    for message in chat:
        parts = [{"type": "image_url", "image_url": {"url": next(urls)}} if c["type"] == "image"
                 else {"type": "text", "text": c["text"]} for c in message["content"]]
        if all(p["type"] == "text" for p in parts) and len(parts) == 1:
            out.append({"role": message["role"], "content": parts[0]["text"]})
        else:
            out.append({"role": message["role"], "content": parts})
    return out


def token_offsets(text: str, logprobs) -> tuple[list[int] | None, list[float] | None]:
    """Where each returned token ends in `text`, and its log-probability; (None, None) without logprobs."""
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None, None
    ends, pos = [], 0
    if "".join(t.token for t in content) == text:
        for t in content:
            pos += len(t.token)
            ends.append(pos)
    else:  # tokens that split a character: count characters of the decoded byte prefix
        data = b""
        for t in content:
            data += bytes(t.bytes or t.token.encode())
            ends.append(len(data.decode("utf-8", errors="ignore")))
    return ends, [float(t.logprob) for t in content]


def local_model_config(model: str, root: str | None) -> tuple[str | None, dict, str | None]:
    """(model_type, image processor settings, where read) of the served model, if a copy is here.

    Looked for, without network, at the served name and at the server's `root` (vLLM reports
    the path or hub id it loaded): a local directory or a Hugging Face cache snapshot."""
    from autolabel.loading import HUB_ID, cached_snapshot, config_model_type

    for name in dict.fromkeys(n for n in (root, model) if n):
        path = Path(name).expanduser()
        folder = str(path.resolve()) if path.is_dir() else cached_snapshot(name) if HUB_ID.match(name) else None
        model_type = config_model_type(folder) if folder is not None else None
        if model_type is None:
            continue
        image: dict = {}
        for file, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
            f = Path(folder) / file
            if f.is_file():
                data = json.loads(f.read_text())
                image = data.get(key, {}) if key else data
                break
        return model_type or None, image, folder
    return None, {}, None


def _resize_rule(image: dict, cap: int) -> ResizeRule:
    """The model's resize settings (or Qwen2.5-VL's), with max pixels capped by this run."""
    size = image.get("size") or {}
    factor = int(image.get("patch_size", 14)) * int(image.get("merge_size", 2)) if image else QWEN25_IMAGE_RULE["factor"]
    low = size.get("shortest_edge") or image.get("min_pixels") or QWEN25_IMAGE_RULE["min_pixels"]
    high = size.get("longest_edge") or image.get("max_pixels") or QWEN25_IMAGE_RULE["max_pixels"]
    if cap < factor * factor:
        raise AutolabelError(f"--backend-option max_image_pixels={cap}: must be at least {factor * factor}")
    return ResizeRule(factor, int(low), min(int(high), cap))


def _guess_family(model: str, root: str | None) -> str:
    """A model_type from the served name when no config is here (Qwen3-VL / Qwen2-VL / Qwen2.5-VL)."""
    name = f"{model} {root or ''}".lower().replace("_", "-").replace(".", "-")
    for marker, family in (("qwen3-vl", "qwen3_vl"), ("qwen2-5-vl", "qwen2_5_vl"), ("qwen2-vl", "qwen2_vl")):
        if marker in name and family in FAMILY_FRAMES:
            return family
    return ""


def redact_url(url: str) -> str:
    """The URL without user:password, for logs and run.json."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def _describe(error: Exception) -> str:
    """An openai/httpx error as one line: status and the server's message."""
    status = getattr(error, "status_code", None)
    body = getattr(error, "body", None)
    message = body.get("message") if isinstance(body, dict) and body.get("message") else str(error)
    first = (str(message).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}" + (f" {status}" if status else "") + (f": {first}" if first else "")
