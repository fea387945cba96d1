"""Run options: one pydantic model fed by a YAML run file and by flags (flags win)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autolabel.backends import DEFAULT_API_KEY_ENV, DEFAULT_BACKEND, DEFAULT_CONCURRENCY
from autolabel.errors import AutolabelError, flag_error
from autolabel.images import DEFAULT_MAX_PIXELS
from autolabel.yaml_io import read_yaml_mapping


class RunConfig(BaseModel):
    """Everything `autolabel run` needs; field names match the long flags (dashes -> underscores)."""

    model_config = ConfigDict(extra="forbid")

    input: Path | None = None  # None only with from_fiftyone
    prompt: list[str] = Field(default_factory=lambda: ["ontology"], min_length=1)
    backend: str = DEFAULT_BACKEND
    model: str | None = None
    mask_model: str | None = None
    out: Path = Path("runs/latest")
    batch_size: int | Literal["auto"] = 4
    shard: tuple[int, int] | None = None
    limit: int | None = Field(None, ge=1)
    overwrite: bool = False
    manifest: Path | None = None
    group_by: str | None = None
    var: dict[str, str] = Field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)  # None: auto (vlm-sam: the schema's longest answer)
    trust_remote_code: bool = False
    backend_option: dict[str, Any] = Field(default_factory=dict)
    allow_outside_root: bool = False
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    decode_workers: int = Field(4, ge=1)
    engine: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, ge=1)
    gpus_per_worker: float | None = Field(None, ge=0)
    ray_address: str | None = None
    server: str | None = None
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1)
    api_key_env: str = DEFAULT_API_KEY_ENV
    quiet: bool = False
    min_score: float = 0.0  # masks scored below this are left out of the prediction lines
    from_fiftyone: str | None = None  # a FiftyOne dataset as the input (fiftyone_source.py) ...
    view: str | None = None  # ... or one of its saved views
    # video (video.py): frames per second labelled (None: every frame), at most N of them, K keyframes
    # for the VLM, and `frames`: INPUT is a folder of frame images forming one clip
    fps: float | None = Field(None, gt=0)
    max_frames: int | None = Field(None, ge=1)
    keyframes: int = Field(4, ge=1)
    frames: bool = False

    @field_validator("shard", mode="before")
    @classmethod
    def _parse_shard(cls, v: Any) -> Any:
        if v is None or isinstance(v, (tuple, list)):
            return v
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(v))
        if not m:
            raise ValueError("must look like I/N, e.g. 0/4 (shards are numbered from 0)")
        i, n = int(m[1]), int(m[2])
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"{v!r}: need 0 <= I < N")
        return (i, n)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _parse_batch_size(cls, v: Any) -> Any:
        text = str(v).strip()
        if text.lower() == "auto":
            return "auto"
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{v!r}: give a whole number >= 1, or auto")
        return int(text)

    @field_validator("var", mode="before")
    @classmethod
    def _parse_vars(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return key_values(v, str)
        if isinstance(v, dict):
            return {str(k): ", ".join(map(str, x)) if isinstance(x, list) else str(x) for k, x in v.items()}
        return v

    @field_validator("backend_option", mode="before")
    @classmethod
    def _parse_backend_options(cls, v: Any) -> Any:
        """KEY=VALUE pairs whose values read as YAML (numbers, booleans, lists, mappings)."""
        if isinstance(v, (list, tuple)):
            return key_values(v, lambda value: yaml.safe_load(value) if value.strip() else "")
        return v

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _server_needs_a_served_model(self) -> RunConfig:
        if self.server is not None:
            if not re.match(r"^https?://", self.server):
                raise ValueError(f"--server {self.server!r}: give the base URL, e.g. http://gpu-box:8000/v1")
            if self.backend != "vlm-sam":
                raise ValueError(f"--server runs the vlm-sam backend's reasoning; backend {self.backend!r} "
                                 "runs in this process")
            if not self.model:
                raise ValueError("--server needs --model: the name the server serves the model under "
                                 "(`autolabel doctor --server URL` lists them)")
        return self

    @property
    def shard_name(self) -> str | None:
        return f"shard-{self.shard[0]}-of-{self.shard[1]}" if self.shard else None


def key_values(items, read_value) -> dict[str, Any]:
    """`KEY=VALUE` strings as a mapping; the value is split at the first `=` only."""
    out = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r} must be KEY=VALUE")
        out[key.strip()] = read_value(value)
    return out


_PTH_VARIANT = re.compile(r"^(?P<variant>\w+:)?(?P<file>.+\.pth)$")


def _paths_relative_to(data: dict[str, Any], base: Path) -> None:
    """One rule for a run file: a relative path in it is relative to the file's folder. `input`,
    `out` and `manifest` are always paths; `model`, `mask_model` and `prompt` entries are paths
    when they name something there (or look like a file: a .pth, a .yaml), else hub ids and
    template names, as on the command line."""
    for key in ("input", "out", "manifest"):
        if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute():
            data[key] = str(base / data[key])
    for key in ("model", "mask_model"):
        value = data.get(key)
        if not isinstance(value, str):
            continue
        pth = _PTH_VARIANT.match(value)
        variant, file = (pth["variant"] or "", pth["file"]) if pth else ("", value)
        if not Path(file).expanduser().is_absolute() and (pth or (base / file).exists()):
            data[key] = variant + str(base / file)
    prompts = data.get("prompt")
    if isinstance(prompts, (str, list)):
        data["prompt"] = [str(base / p) if isinstance(p, str) and not Path(p).is_absolute()
                          and (Path(p).suffix.lower() in (".yaml", ".yml") or (base / p).is_file()) else p
                          for p in ([prompts] if isinstance(prompts, str) else prompts)]


def _input_or_manifest(data: dict[str, Any]) -> None:
    """INPUT, or `--manifest FILE` alone (the manifest is the input); both only when they agree."""
    manifest = data.get("manifest")
    if data.get("input") is None:
        if manifest is None:
            raise AutolabelError("missing INPUT: give a folder, manifest or COCO file, or --manifest FILE "
                                 "(or `input:` in --config)")
        data["input"] = manifest
    elif manifest is not None and Path(data["input"]).resolve() != Path(manifest).resolve():
        raise AutolabelError(f"INPUT {data['input']} and --manifest {manifest} are two inputs; give the manifest "
                             f"either as INPUT or with --manifest (its image paths are relative to its own folder)")
    source = Path(manifest if manifest is not None else data["input"])
    if data.get("group_by") and source.suffix.lower() in (".jsonl", ".csv"):
        raise AutolabelError(f"--group-by groups the files of a folder or the images of a COCO file; the "
                             f"manifest {source} lists its groups itself (its `id` / `group_id`)")


def _fiftyone_input(data: dict[str, Any]) -> None:
    """`--from-fiftyone NAME` is the input: no INPUT, --manifest or --group-by next to it."""
    others = [flag for key, flag in (("input", "INPUT"), ("manifest", "--manifest"), ("group_by", "--group-by"))
              if data.get(key) is not None]
    if others:
        raise AutolabelError(f"--from-fiftyone {data['from_fiftyone']} is the input; drop {', '.join(others)} "
                             "(a grouped dataset's groups are the image groups)")


def load_run_config(config_file: Path | None, flags: dict[str, Any]) -> RunConfig:
    """Merge a YAML run file with the flags that were given (None means 'not given')."""
    data: dict[str, Any] = {}
    if config_file is not None:
        loaded = read_yaml_mapping(config_file, "run config")
        data = {k.replace("-", "_"): v for k, v in loaded.items()}
        if "prompts" in data and "prompt" not in data:
            data["prompt"] = data.pop("prompts")
        _paths_relative_to(data, Path(config_file).parent)
    given = {k: v for k, v in flags.items() if v is not None and v != [] and v is not False}
    for key, parse in (("var", RunConfig._parse_vars), ("backend_option", RunConfig._parse_backend_options)):
        if key in given and key in data:  # mappings merge, flags win per key
            data[key] = {**parse(data[key]), **parse(given.pop(key))}
    data.update(given)
    where = str(config_file) if config_file else "options"
    if data.get("from_fiftyone") is not None:
        _fiftyone_input(data)
    else:
        if data.get("view") is not None:
            raise AutolabelError("--view names a saved view of the FiftyOne dataset given with --from-fiftyone")
        _input_or_manifest(data)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        raise flag_error(e, where) from None
    from autolabel.store import check_output_dir

    check_output_dir(config.out, "--out")
    return config
