"""The catalog: known models and GPUs as YAML data files, loaded by id.

Each entry cites its source. ``load_model("mixtral-8x7b")`` returns a ModelSpec; an unknown id
raises CatalogError listing the closest ids. A path to a YAML file works wherever an id does.
"""

from __future__ import annotations

import copy
import difflib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from moesim.specs import GPUSpec, ModelSpec
from moesim.yaml_io import YAMLFileError, YAMLLoader, load_yaml_mapping

_HERE = Path(__file__).parent


class CatalogError(LookupError):
    """An id the catalog does not know (the message lists close matches), or a spec file given
    in its place that cannot be read."""


def _ids(kind: str) -> list[str]:
    return sorted(p.stem for p in (_HERE / kind).glob("*.yaml"))


def model_ids() -> list[str]:
    return _ids("models")


def gpu_ids() -> list[str]:
    return _ids("gpus")


def _unknown(kind: str, name: str, known: list[str]) -> CatalogError:
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return CatalogError(
        f"unknown {kind} id '{name}'.{hint} Known {kind}s: {', '.join(known)} "
        f"(or give a path to a YAML file, or the spec inline)"
    )


@cache
def _raw(kind: str, name: str) -> dict[str, Any]:
    path = _HERE / kind / f"{name}.yaml"
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=YAMLLoader)


def raw_entry(kind: str, name: str) -> dict[str, Any]:
    """The entry's data as a dict (``kind`` is 'models' or 'gpus'); ids or YAML paths."""
    known = _ids(kind)
    if name in known:
        # a deep copy: callers edit nested blocks (model["moe"]) and the cache must not change
        return copy.deepcopy(_raw(kind, name))
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and (path.exists() or path.is_symlink()):
        return _read_file(path)  # a folder, FIFO or symlink loop is named by yaml_io
    raise _unknown(kind.rstrip("s"), name, known)


def _read_file(path: Path) -> dict[str, Any]:
    """A spec from a user's YAML file, read as scenario files are (``moesim.yaml_io``): broken
    YAML, a key given twice or a binary file is a CatalogError that names the file and line."""
    try:
        return load_yaml_mapping(path)[0]
    except YAMLFileError as e:
        raise CatalogError(str(e)) from None


def load_model(name: str) -> ModelSpec:
    """A model by catalog id, or from a model YAML file."""
    return ModelSpec.model_validate(raw_entry("models", name))


def load_gpu(name: str) -> GPUSpec:
    """A GPU by catalog id, or from a GPU YAML file."""
    return GPUSpec.model_validate(raw_entry("gpus", name))
