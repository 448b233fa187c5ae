"""Import a Hugging Face ``config.json`` as a moesim ModelSpec (``moesim import-hf``).

Users have the config of the model they care about long before they have a moesim YAML for it;
this turns the public field names of the supported architectures into a ModelSpec, and refuses
(with the field and the fix) whatever moesim cannot express, rather than guessing.

Supported ``model_type``: llama, mistral, qwen2, qwen3 (dense); mixtral, deepseek_v2,
deepseek_v3, qwen2_moe, qwen3_moe, dbrx (MoE). Which layers are MoE is computed with the rule of
each architecture's Hugging Face modelling code, then expressed as moesim's
``first_k_dense`` + ``moe_every``; a pattern those two cannot express is an error.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from moesim.file_io import input_problem
from moesim.hf_architectures import CONVERTERS, SUPPORTED_TYPES, HFConfig, HFImportError
from moesim.specs import ModelSpec


# -- public API ---------------------------------------------------------------------------------
def _default_name(config: dict[str, Any], fallback: str) -> str:
    path = config.get("_name_or_path")
    if isinstance(path, str) and path.strip("/"):
        return path.strip("/").split("/")[-1].lower()
    return fallback


def _convert(config: dict[str, Any], name: str | None, source: str) -> tuple[ModelSpec, list[str]]:
    if not isinstance(config, dict):
        raise HFImportError(f"expected a JSON object (a config.json), got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is None:
        raise HFImportError(
            "the config has no 'model_type': add it (one of "
            f"{', '.join(SUPPORTED_TYPES)}) or write the model YAML by hand"
        )
    converter = CONVERTERS.get(model_type)
    if converter is None:
        raise HFImportError(
            f"model_type '{model_type}' is not supported: import-hf knows "
            f"{', '.join(SUPPORTED_TYPES)}; write the model YAML by hand "
            "(see moesim/catalog/models/ for examples)"
        )
    notes: list[str] = []
    fields = converter(HFConfig(config, model_type), notes)
    spec_name = name or _default_name(config, fallback=model_type.replace("_", "-"))
    data = {"name": spec_name, "source": source or f"Hugging Face config (model_type {model_type})"}
    data |= fields
    try:
        return ModelSpec.model_validate(data), notes
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'model'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise HFImportError(
            f"the {model_type} config gives a model moesim cannot build: {problems}"
        ) from None


def model_spec_from_hf(config_dict: dict[str, Any], name: str | None = None) -> ModelSpec:
    """A ModelSpec from the dict of a Hugging Face ``config.json``."""
    return _convert(config_dict, name, source="")[0]


def _read_config(config_path: str | Path) -> dict[str, Any]:
    p = Path(config_path)
    problem = input_problem(p)  # a folder, a FIFO (never opened), a symlink loop: said so
    if problem is not None:
        raise HFImportError(problem.replace("give the path of a file", "give a config.json"))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise HFImportError(
            f"{p}: not UTF-8 text: give the path of a config.json (a JSON text file)"
        ) from None
    except OSError as e:
        raise HFImportError(f"{p}: cannot read it: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise HFImportError(f"{p}:{e.lineno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise HFImportError(
            f"{p}: nested too deeply to read (thousands of levels; a config.json has a few): "
            "give the model's config.json"
        ) from None
    except ValueError:  # an integer of more than 4,300 digits (Python's guard)
        raise HFImportError(
            f"{p}: holds an integer of over 4,300 digits: a config's sizes are small integers"
        ) from None
    if not isinstance(data, dict):
        raise HFImportError(f"{p}: expected a JSON object, got {type(data).__name__}")
    return data


def _line_of_quoted_key(path: Path, message: str) -> int | None:
    """The line of the config key a message quotes first (``'num_experts_per_tok' must be an
    integer``; for ``'text_config.x'`` the key ``x``), found in the file's text."""
    m = re.search(r"'([A-Za-z_][\w.]*)'", message)
    if m is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    key = m.group(1).rsplit(".", 1)[-1]
    found = re.search(rf'"{re.escape(key)}"\s*:', text)
    return text.count("\n", 0, found.start()) + 1 if found else None


def model_yaml_from_hf(config_path: str | Path, name: str | None = None) -> str:
    """The YAML text of the ModelSpec for a ``config.json``, headed by where it came from."""
    p = Path(config_path)
    config = _read_config(p)
    fallback = p.parent.name.lower() if p.stem == "config" and p.parent.name else p.stem.lower()
    model_type = config.get("model_type")
    if name is None:
        name = _default_name(config, fallback=fallback or str(model_type))
    try:
        spec, notes = _convert(
            config, name, source=f"imported from Hugging Face config {p.name} ({model_type})"
        )
    except HFImportError as e:  # the file and, where the message quotes a key, its line
        line = _line_of_quoted_key(p, str(e))
        raise HFImportError(f"{p}{f':{line}' if line else ''}: {e}") from None
    header = [f"# Imported by moesim import-hf from {p} (model_type: {model_type})."]
    for note in notes:
        header += textwrap.wrap(note, width=98, initial_indent="# note: ", subsequent_indent="#   ")
    body = yaml.safe_dump(
        spec.model_dump(mode="json", exclude_none=True),
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )
    return "\n".join(header) + "\n" + body
