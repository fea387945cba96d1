"""The one loading path for hub ids and local directories: offline first, one clear message.

A local directory is used as is. A hub id is looked up in the Hugging Face cache first (no
network when it is there); only when it is missing and the machine may go online is it
downloaded. Anything that fails becomes ModelNotAvailable naming the model, where it was looked
for and how to get it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from autolabel.errors import AutolabelError, ModelNotAvailable

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a transformers checkpoint needs; skips other formats (onnx, gguf, .bin twins) a repo may hold
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py", "*.tiktoken"]

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_pretrained(model: str, *, local_files_only: bool | None = None) -> str:
    """A local directory for `model` (a directory or a hub id), downloading only if allowed."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    from huggingface_hub import constants, snapshot_download

    cache = constants.HF_HUB_CACHE
    if not HUB_ID.match(model):
        raise ModelNotAvailable(f"model {model!r}: no such directory ({path.resolve()}), and not a hub id "
                                f"of the form org/name")
    offline = hf_offline() if local_files_only is None else local_files_only
    try:
        return snapshot_download(model, local_files_only=True, allow_patterns=CHECKPOINT_FILES)
    except Exception:  # noqa: BLE001 - not (completely) in the cache
        pass
    if offline:
        raise ModelNotAvailable(_missing(model, cache, "HF_HUB_OFFLINE is set, so nothing is downloaded"))
    try:
        return snapshot_download(model, allow_patterns=CHECKPOINT_FILES)
    except Exception as e:  # noqa: BLE001 - network, auth, gated repo, unknown id
        raise ModelNotAvailable(_missing(model, cache, f"download failed: {type(e).__name__}: "
                                                       f"{str(e).splitlines()[0] if str(e) else ''}")) from None


def _missing(model: str, cache: str, why: str) -> str:
    return (f"model {model!r} is not available: not in the Hugging Face cache ({cache}) and {why}. "
            f"On a machine with network run `hf download {model}` (copy the cache over, or set HF_HUB_CACHE), "
            f"or pass a local directory.")


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
        raise AutolabelError(f"--dtype {dtype!r}: use one of bf16, fp16, fp32")
    return getattr(torch, name)
