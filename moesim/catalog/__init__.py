"""The catalog: known models and GPUs as YAML data files, loaded by id.

Each entry cites its source. ``load_model("mixtral-8x7b")`` returns a ModelSpec; an unknown id
raises CatalogError listing the closest ids. A path to a YAML file works wherever an id does.
"""

from __future__ import annotations

import copy
import difflib
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from moesim.specs import GPUSpec, ModelSpec

_HERE = Path(__file__).parent


class YAMLLoader(yaml.SafeLoader):
    """A SafeLoader that reads floats as YAML 1.2 does.

    PyYAML follows YAML 1.1, where ``1.0e12`` and ``46.7e9`` (no sign after the ``e``) are
    strings; YAML 1.2 tools (and the JSON Schema of ``moesim schema``) read them as numbers,
    and so do the catalog and the scenario loader.
    """


YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


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
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _read_file(path)
    raise _unknown(kind.rstrip("s"), name, known)


def _read_file(path: Path) -> dict[str, Any]:
    """A spec from a user's YAML file: broken YAML or a binary file is a CatalogError that names
    the file (and the line), never a parser traceback."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=YAMLLoader)
    except UnicodeDecodeError:
        raise CatalogError(f"{path}: not UTF-8 text: give a YAML file, saved as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or e
        raise CatalogError(f"{where}: not valid YAML: {problem}") from None
    except OSError as e:
        raise CatalogError(f"{path}: cannot read it: {e.strerror}") from None
    if not isinstance(data, dict):
        raise CatalogError(
            f"{path}: expected a mapping of a spec's fields, got {type(data).__name__}"
        )
    return data


def load_model(name: str) -> ModelSpec:
    """A model by catalog id, or from a model YAML file."""
    return ModelSpec.model_validate(raw_entry("models", name))


def load_gpu(name: str) -> GPUSpec:
    """A GPU by catalog id, or from a GPU YAML file."""
    return GPUSpec.model_validate(raw_entry("gpus", name))
