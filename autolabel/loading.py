"""The one loading path for hub ids, local directories and `.pth` files: offline first, one clear message.

A local directory is used as is. A hub id is looked up in the Hugging Face cache first (no
network when it is there); only when it is missing and the machine may go online is it
downloaded. Anything that fails becomes ModelNotAvailable naming the model, where it was looked
for and how to get it. `.pth` files are read with `weights_only=True`, so they cannot run code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from autolabel.errors import AutolabelError, ModelNotAvailable

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a transformers checkpoint needs; skips other formats (onnx, gguf, .bin/.pt twins) a repo may hold
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py", "*.tiktoken"]

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


def hf_offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE), read now rather than at import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def resolve_pretrained(model: str, *, local_files_only: bool | None = None) -> str:
    """A local directory for `model` (a directory or a hub id), downloading only if allowed.

    `local_files_only=None` follows HF_HUB_OFFLINE; the cache is always tried before the network.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if not HUB_ID.match(model):
        raise ModelNotAvailable(f"model {model!r}: no such directory ({path.resolve()}), and it is not a hub id "
                                "of the form org/name")
    from huggingface_hub import snapshot_download

    cached = cached_snapshot(model)
    if cached:
        return cached
    env = "HF_HUB_OFFLINE is set" if hf_offline() else "HF_HUB_OFFLINE is not set"
    if local_files_only is None and hf_offline():
        raise ModelNotAvailable(_missing(model, path, f"{env}, so nothing was downloaded"))
    if local_files_only:
        raise ModelNotAvailable(_missing(model, path, f"local files only were asked for ({env}), "
                                                      "so nothing was downloaded"))
    try:
        return snapshot_download(model, allow_patterns=CHECKPOINT_FILES)
    except Exception as e:  # noqa: BLE001 - network, auth, gated repo, unknown id: all end the same way
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ModelNotAvailable(_missing(model, path, f"{env} and the download failed "
                                                      f"({type(e).__name__}: {first_line})")) from None


def config_model_type(folder: str | Path) -> str | None:
    """The `model_type` in a checkpoint folder's config.json ("" when it names none); None when
    the folder has no config.json (not a transformers checkpoint)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("model_type", "")


def cached_snapshot(model: str) -> str | None:
    """The cached snapshot of a hub id, if it holds a config.json; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(model, local_files_only=True, allow_patterns=CHECKPOINT_FILES)
    except Exception:  # noqa: BLE001 - huggingface_hub raises several kinds for "not cached"
        return None
    return snapshot if (Path(snapshot) / "config.json").is_file() else None


def _missing(model: str, path: Path, why: str) -> str:
    from huggingface_hub import constants

    return (f"model {model!r} is not available: no local directory {path.resolve()}, not in the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}), and {why}. On a machine with network run `hf download {model}` "
            f"(or `huggingface-cli download {model}`) and copy the cache over (or point HF_HUB_CACHE at it), "
            "or pass a local directory.")


def load_weights_only(path: Path) -> dict:
    """A `.pth` state dict read with `weights_only=True`: plain tensors only, never code."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise AutolabelError(f"{path}: refused to load: it is not a plain weights file, and loading it would run "
                             f"code from the pickle (torch.load weights_only=True: {str(e).splitlines()[0]})") from None


def pick_device(device: str | None) -> str:
    """`cuda` when there is a GPU, else `cpu`; an explicit choice is checked."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AutolabelError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
    return device


def pick_dtype(dtype: str | None, device: str):
    """bf16 on CUDA, float32 on CPU, unless asked otherwise."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    name = DTYPES.get(dtype.lower())
    if name is None:
        raise AutolabelError(f"--dtype {dtype!r}: use one of bf16, fp16, fp32 (or auto)")
    return getattr(torch, name)
