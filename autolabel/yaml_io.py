"""Reading the YAML files users write (templates, run files) with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from autolabel.errors import AutolabelError


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The YAML mapping in `path`; `what` names the kind of file in error messages."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutolabelError(f"{path}: {what} file not found") from None
    except yaml.YAMLError as e:
        raise AutolabelError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AutolabelError(f"{path}: a {what} must be a YAML mapping")
    return data
