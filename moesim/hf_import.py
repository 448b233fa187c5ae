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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from moesim.file_io import input_problem
from moesim.specs import ModelSpec

DEFAULT_MAX_SEQ_LEN = 4096
"""``max_seq_len`` is the sequence length FLOPs default to, not the context window: the long
``max_position_embeddings`` of modern configs (32k-160k) is rarely the training length."""

DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MOE_TYPES = ("mixtral", "deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen3_moe", "dbrx")
SUPPORTED_TYPES = DENSE_TYPES + MOE_TYPES

_GATED_ACT = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_new": "geglu",
    "gelu_pytorch_tanh": "geglu",
    "gelu_fast": "geglu",
}


class HFImportError(ValueError):
    """A config that cannot be imported; the message names the field and the fix."""


class _Config:
    """Typed access to a config dict, with errors that name the field and the model_type."""

    def __init__(self, data: dict[str, Any], model_type: str, prefix: str = ""):
        self.data = data
        self.model_type = model_type
        self.prefix = prefix

    def _where(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def int_(self, key: str, default: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            if default is not None:
                return default
            raise HFImportError(
                f"config (model_type '{self.model_type}') lacks '{self._where(key)}': add it to "
                "the config.json (copy it from the model's Hugging Face config)"
            )
        if isinstance(value, bool) or not isinstance(value, int):
            raise HFImportError(
                f"'{self._where(key)}' must be an integer, got {value!r}: fix it in the config"
            )
        return value

    def opt_int(self, key: str) -> int | None:
        return self.int_(key) if self.has(key) else None

    def bool_(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise HFImportError(
                f"'{self._where(key)}' must be true or false, got {value!r}: fix it in the config"
            )
        return value

    def float_(self, key: str, default: float) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HFImportError(
                f"'{self._where(key)}' must be a number, got {value!r}: fix it in the config"
            )
        return float(value)

    def str_(self, key: str, default: str) -> str:
        value = self.data.get(key)
        return default if value is None else str(value)

    def sub(self, key: str) -> _Config:
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise HFImportError(
                f"config (model_type '{self.model_type}') lacks the '{self._where(key)}' "
                "block: add it to the config.json"
            )
        return _Config(value, self.model_type, prefix=f"{self._where(key)}.")


# -- pieces shared by the architectures ---------------------------------------------------------
def _ffn_kind(act: str, where: str) -> str:
    """HF names the activation of a gated FFN; moesim names the gated FFN."""
    kind = _GATED_ACT.get(act)
    if kind is None:
        raise HFImportError(
            f"'{where}' is '{act}': moesim models gated FFNs with silu (swiglu) or gelu "
            f"(geglu); set {where} to one of {', '.join(sorted(_GATED_ACT))} or write the YAML "
            "by hand"
        )
    return kind


def _max_seq_len(c: _Config, key: str, notes: list[str]) -> int:
    if not c.has(key):
        return DEFAULT_MAX_SEQ_LEN
    context = c.int_(key)
    seq = min(context, DEFAULT_MAX_SEQ_LEN)
    if seq < context:
        notes.append(
            f"max_seq_len {seq}: the default sequence length for FLOPs, capped from "
            f"{key}={context} (the context window, not the training length); edit it or pass "
            "--seq-len / workload.seq_len"
        )
    return seq


def _fit_moe_pattern(moe_layers: list[bool], model_type: str, why: str) -> tuple[int, int]:
    """``(first_k_dense, moe_every)`` reproducing exactly which layers are MoE."""
    n = len(moe_layers)
    first = next((i for i, x in enumerate(moe_layers) if x), None)
    if first is None:
        raise HFImportError(
            f"no layer of this {model_type} config is an MoE layer ({why}): fix the config or "
            "import it as a dense model"
        )
    for every in range(1, n + 1):
        first_k = first - every + 1
        if first_k < 0:
            break
        pattern = [i >= first_k and (i - first_k) % every == every - 1 for i in range(n)]
        if pattern == moe_layers:
            return first_k, every
    sparse = [i for i, x in enumerate(moe_layers) if x]
    raise HFImportError(
        f"the MoE layers of this {model_type} config ({why}: layers {sparse}) are not "
        "'the first k layers dense, then every P-th layer MoE', which is what moesim's "
        "moe.first_k_dense and moe.moe_every express: make the dense layers a contiguous "
        "prefix or write the YAML by hand"
    )


def _router(scoring: str, where: str) -> str:
    routers = {"softmax": "softmax_topk", "sigmoid": "sigmoid_topk"}
    if scoring not in routers:
        raise HFImportError(
            f"'{where}' is '{scoring}': moesim supports softmax and sigmoid scoring; set it to "
            "one of those or write the YAML by hand"
        )
    return routers[scoring]


def _gqa_attention(c: _Config, notes: list[str]) -> dict[str, Any]:
    """Heads and head size of an MHA/GQA model with the HF names."""
    n_heads = c.int_("num_attention_heads")
    n_kv = c.int_("num_key_value_heads", default=n_heads)
    out: dict[str, Any] = {
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "attention": "mha" if n_kv == n_heads else "gqa",
    }
    if c.has("head_dim"):
        out["head_dim"] = c.int_("head_dim")
    if c.has("sliding_window") and c.bool_("use_sliding_window", default=True):
        notes.append(
            f"sliding_window={c.data['sliding_window']} is not modelled: attention FLOPs are "
            "those of full causal attention"
        )
    return out


def _common(c: _Config, notes: list[str]) -> dict[str, Any]:
    """The fields every HF decoder config names the same way."""
    return {
        "vocab_size": c.int_("vocab_size"),
        "n_layers": c.int_("num_hidden_layers"),
        "d_model": c.int_("hidden_size"),
        "ffn_kind": _ffn_kind(c.str_("hidden_act", "silu"), "hidden_act"),
        "ffn_hidden": c.int_("intermediate_size"),
        "tie_embeddings": c.bool_("tie_word_embeddings", default=False),
        "max_seq_len": _max_seq_len(c, "max_position_embeddings", notes),
    }


# -- one converter per architecture ---------------------------------------------------------------
def _dense(c: _Config, notes: list[str]) -> dict[str, Any]:
    """llama, mistral, qwen2, qwen3: the Llama layout with per-family attention details."""
    spec = _common(c, notes) | _gqa_attention(c, notes)
    if c.model_type == "qwen2":
        # Qwen2's modelling code hard-wires bias=True on q/k/v (no config key).
        spec["attention_bias"] = True
    else:
        spec["attention_bias"] = c.bool_("attention_bias", default=False)
        if spec["attention_bias"] and c.model_type == "llama":
            notes.append("attention_bias: the o_proj bias (d_model parameters) is not counted")
    if c.model_type == "qwen3":
        spec["qk_norm"] = True
    if c.bool_("mlp_bias", default=False):
        raise HFImportError(
            "mlp_bias is true: moesim's FFNs have no bias; set mlp_bias to false or write the "
            "YAML by hand"
        )
    return spec


def _mixtral(c: _Config, notes: list[str]) -> dict[str, Any]:
    spec = _common(c, notes) | _gqa_attention(c, notes)
    spec["moe"] = {
        "n_routed_experts": c.int_("num_local_experts"),
        "top_k": c.int_("num_experts_per_tok"),
        "expert_hidden": c.int_("intermediate_size"),
        "router": "softmax_topk",
    }
    return spec


def _deepseek(c: _Config, notes: list[str]) -> dict[str, Any]:
    """DeepSeek-V2/V3: MLA attention, DeepSeekMoE with shared experts and group-limited routing."""
    spec = _common(c, notes)
    spec["n_heads"] = c.int_("num_attention_heads")
    spec["attention"] = "mla"
    spec["mla"] = {
        "q_lora_rank": c.opt_int("q_lora_rank"),
        "kv_lora_rank": c.int_("kv_lora_rank"),
        "qk_nope_head_dim": c.int_("qk_nope_head_dim"),
        "qk_rope_head_dim": c.int_("qk_rope_head_dim"),
        "v_head_dim": c.int_("v_head_dim"),
    }
    n_layers = spec["n_layers"]
    first_k = c.int_("first_k_dense_replace", default=0)
    freq = c.int_("moe_layer_freq", default=1)
    # DeepseekV2DecoderLayer: MoE iff layer_idx >= first_k_dense_replace and
    # layer_idx % moe_layer_freq == 0
    moe_layers = [i >= first_k and i % freq == 0 for i in range(n_layers)]
    first_k_dense, moe_every = _fit_moe_pattern(
        moe_layers,
        c.model_type,
        f"first_k_dense_replace={first_k}, moe_layer_freq={freq}",
    )
    n_groups = c.int_("n_group", default=1)
    topk_groups = c.opt_int("topk_group")
    spec["moe"] = {
        "n_routed_experts": c.int_("n_routed_experts"),
        "top_k": c.int_("num_experts_per_tok"),
        "expert_hidden": c.int_("moe_intermediate_size"),
        "n_shared_experts": c.int_("n_shared_experts", default=0),
        "first_k_dense": first_k_dense,
        "moe_every": moe_every,
        "router": _router(c.str_("scoring_func", "softmax"), "scoring_func"),
        "n_groups": n_groups,
        "topk_groups": topk_groups if n_groups > 1 else None,
        "norm_topk_prob": c.bool_("norm_topk_prob", default=False),
        "routed_scaling_factor": c.float_("routed_scaling_factor", default=1.0),
    }
    spec["mtp_depth"] = c.int_("num_nextn_predict_layers", default=0)
    return spec


def _qwen_moe(c: _Config, notes: list[str]) -> dict[str, Any]:
    """Qwen2-MoE (one gated shared expert, QKV bias) and Qwen3-MoE (qk-norm, no shared)."""
    spec = _common(c, notes) | _gqa_attention(c, notes)
    n_layers = spec["n_layers"]
    step = c.int_("decoder_sparse_step", default=1)
    mlp_only = c.data.get("mlp_only_layers") or []
    if not isinstance(mlp_only, list) or not all(isinstance(x, int) for x in mlp_only):
        raise HFImportError(
            f"'mlp_only_layers' must be a list of layer indices, got {mlp_only!r}: fix the config"
        )
    n_experts = c.int_("num_experts")
    # Qwen2MoeDecoderLayer: sparse iff layer_idx not in mlp_only_layers and num_experts > 0
    # and (layer_idx + 1) % decoder_sparse_step == 0
    moe_layers = [i not in mlp_only and (i + 1) % step == 0 for i in range(n_layers)]
    first_k_dense, moe_every = _fit_moe_pattern(
        moe_layers, c.model_type, f"decoder_sparse_step={step}, mlp_only_layers={mlp_only}"
    )
    moe: dict[str, Any] = {
        "n_routed_experts": n_experts,
        "top_k": c.int_("num_experts_per_tok"),
        "expert_hidden": c.int_("moe_intermediate_size"),
        "first_k_dense": first_k_dense,
        "moe_every": moe_every,
        "router": "softmax_topk",
        "norm_topk_prob": c.bool_("norm_topk_prob", default=c.model_type == "qwen3_moe"),
    }
    if c.model_type == "qwen2_moe":
        spec["attention_bias"] = True  # hard-wired in Qwen2MoeAttention
        shared = c.int_("shared_expert_intermediate_size", default=0)
        if shared:
            moe |= {"n_shared_experts": 1, "shared_expert_hidden": shared}
            moe["shared_expert_gate"] = True
    else:
        spec["attention_bias"] = c.bool_("attention_bias", default=False)
        spec["qk_norm"] = True
    spec["moe"] = moe
    return spec


def _dbrx(c: _Config, notes: list[str]) -> dict[str, Any]:
    """DBRX nests attention under ``attn_config`` and the MoE under ``ffn_config``."""
    attn = c.sub("attn_config")
    ffn = c.sub("ffn_config")
    n_heads = c.int_("n_heads")
    n_kv = attn.int_("kv_n_heads", default=n_heads)
    act = ffn.data.get("ffn_act_fn") or {}
    act_name = act.get("name", "silu") if isinstance(act, dict) else "silu"
    hidden = ffn.int_("ffn_hidden_size")
    return {
        "vocab_size": c.int_("vocab_size"),
        "n_layers": c.int_("n_layers"),
        "d_model": c.int_("d_model"),
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "attention": "mha" if n_kv == n_heads else "gqa",
        "ffn_kind": _ffn_kind(str(act_name), "ffn_config.ffn_act_fn.name"),
        "ffn_hidden": hidden,
        "moe": {
            "n_routed_experts": ffn.int_("moe_num_experts"),
            "top_k": ffn.int_("moe_top_k"),
            "expert_hidden": hidden,
            "router": "softmax_topk",
        },
        "tie_embeddings": c.bool_("tie_word_embeddings", default=False),
        "max_seq_len": _max_seq_len(c, "max_seq_len", notes),
    }


_CONVERTERS: dict[str, Callable[[_Config, list[str]], dict[str, Any]]] = {
    **dict.fromkeys(DENSE_TYPES, _dense),
    "mixtral": _mixtral,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "dbrx": _dbrx,
}


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
    converter = _CONVERTERS.get(model_type)
    if converter is None:
        raise HFImportError(
            f"model_type '{model_type}' is not supported: import-hf knows "
            f"{', '.join(SUPPORTED_TYPES)}; write the model YAML by hand "
            "(see moesim/catalog/models/ for examples)"
        )
    notes: list[str] = []
    fields = converter(_Config(config, model_type), notes)
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
