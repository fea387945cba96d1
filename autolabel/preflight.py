"""What `autolabel run` checks before it loads anything, so a mistake costs seconds, not a model load.

Run when a run has work left (a rerun with nothing to do checks nothing and loads nothing):
`--dtype` is one the backends know, `--device cuda[:N]` exists here, and every model the backend
will load is here (a local directory or file, a hub id in the Hugging Face cache) or can be
downloaded. Everything wrong is named in one message, so a user fetches all missing models at
once. With `--server URL` the reasoning model lives on the server and is not looked for here;
the mask model still is. A plugin backend's models are its own business: only `--dtype` and
`--device` are checked for it. With `--ray-address` the models and GPUs are the cluster's, not
this machine's, so only `--dtype` is checked.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from autolabel.backends import available_backends
from autolabel.backends.mask_heads import pth_checkpoint
from autolabel.config import RunConfig
from autolabel.errors import AutolabelError
from autolabel.loading import DTYPES, HUB_ID, cached_snapshot, hf_offline

PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NeededModel:
    flag: str      # --model, --mask-model
    model: str
    default: bool  # not given: the backend's default


def check_run(config: RunConfig) -> list[str]:
    """Raise one AutolabelError naming every problem with --dtype, --device and the models; else
    say, a line per model, where each will load from (before anything is downloaded)."""
    problems = [p for p in (_dtype_problem(config.dtype),) if p]
    needed: list[NeededModel] = []
    if config.ray_address is None:
        problems += [p for p in (_device_problem(config.device),) if p]
        try:
            needed = needed_models(config)
        except AutolabelError as e:
            problems.append(str(e))
        missing = _missing_models(needed)
        if missing:
            problems.append(missing)
    if problems:
        raise AutolabelError("; ".join(problems))
    return [f"{m.flag} {m.model}{' (default)' if m.default else ''}: {_where(m.model)}" for m in needed]


def _where(model: str) -> str:
    """Where a model that will load comes from: a local path, the HF cache, or a download."""
    path = Path(_weights_file(model)).expanduser()
    if path.exists():
        return f"local {path.resolve()}"
    cached = cached_snapshot(model)
    return f"cached ({cached})" if cached else "not cached: it will be downloaded from the Hugging Face Hub now"


def needed_models(config: RunConfig) -> list[NeededModel]:
    """The models a built-in backend loads in this process for `config`."""
    spec = available_backends().get(config.backend)
    if config.backend == "vlm-sam" and spec is not None:
        out = [] if config.server else [NeededModel("--model", config.model or spec.default_model, not config.model)]
        tracker = config.backend_option.get("tracker")  # video: the SAM 2 video model (backends/tracking.py)
        return out + [NeededModel("--mask-model", config.mask_model or spec.default_mask_model, not config.mask_model)] \
            + ([NeededModel("--backend-option tracker", str(tracker), False)] if tracker else [])
    if config.backend == "prima":
        if not config.model:
            raise AutolabelError("--backend prima needs --model DIR: a checkpoint made by `autolabel train prima`")
        return [NeededModel("--model", config.model, False)]
    return []


def _dtype_problem(dtype: str | None) -> str | None:
    if dtype is None or dtype.lower() in DTYPES or dtype.lower() == "auto":
        return None
    return f"--dtype {dtype}: not a dtype the models load in; use bf16, fp16 or fp32 (or auto)"


def _device_problem(device: str | None) -> str | None:
    if device is None or device in ("cpu", "auto") or not device.startswith("cuda"):
        return None
    import torch  # a CUDA device is asked for: the run imports torch anyway

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        return f"--device {device}: CUDA is not available on this machine ({build}); use --device cpu"
    count = torch.cuda.device_count()
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= count):
        return f"--device {device}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}"
    return None


def _missing_models(needed: list[NeededModel]) -> str | None:
    """One sentence naming every needed model that is not here and cannot be downloaded."""
    with ThreadPoolExecutor(max(1, len(needed))) as pool:
        reasons = list(pool.map(lambda m: _why_missing(m.model), needed))
    missing = [(m, why) for m, why in zip(needed, reasons) if why]
    if not missing:
        return None
    from huggingface_hub import constants

    def name(m: NeededModel) -> str:
        return f"{m.flag} {m.model}" + (" (the default)" if m.default else "")

    hub = [m.model for m, _ in missing if HUB_ID.match(m.model) and not Path(m.model).expanduser().exists()]
    head = (f"model {name(missing[0][0])} is not available: {missing[0][1]}" if len(missing) == 1 else
            f"{len(missing)} models are not available: " + "; ".join(f"{name(m)}: {why}" for m, why in missing))
    fetch = (" and ".join(f"`hf download {h}`" for h in hub) + " on a machine with network and copy the cache "
             f"over (the cache here: {constants.HF_HUB_CACHE}; or point HF_HUB_CACHE at it)") if hub else ""
    return head + (". Get it: " if len(missing) == 1 else ". Get them: ") + \
        (fetch + ", or pass local " if fetch else "pass existing ") + "directories/files with --model / --mask-model"


def _weights_file(model: str) -> str:
    """The path in `model`: the file of a `[variant:]file.pth` checkpoint, else `model` itself."""
    pth = pth_checkpoint(model)
    return pth[1] if pth else model


def _why_missing(model: str) -> str | None:
    """None when `model` will load here; else why not, in a few words."""
    if pth_checkpoint(model):
        path = Path(_weights_file(model)).expanduser()
        return None if path.is_file() else f"no such file {path.resolve()}"
    path = Path(model).expanduser()
    if path.is_dir():
        return None
    if not HUB_ID.match(model):
        return f"no such directory {path.resolve()}, and not a hub id of the form org/name"
    if cached_snapshot(model):
        return None
    if hf_offline():
        return "not in the Hugging Face cache, and HF_HUB_OFFLINE is set, so nothing is downloaded"
    try:  # online: the load would download it; ask the Hub whether it can
        from huggingface_hub import HfApi

        HfApi().model_info(model, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - not found, gated, no network: all mean it will not load
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"not in the Hugging Face cache, and the Hub cannot give it ({type(e).__name__}: {first[:160]})"
    return None
