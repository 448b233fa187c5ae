"""One converter per Hugging Face architecture: the public fields of a ``config.json`` →
moesim ModelSpec fields (``moesim.hf_import`` reads the file and validates the result).

Which layers are MoE is computed with the rule of each architecture's Hugging Face modelling
code, then expressed as moesim's ``first_k_dense`` + ``moe_every``; a pattern those two cannot
express is an error, as is any field moesim cannot represent (named, with the fix).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


class HFConfig:
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

    def sub(self, key: str) -> HFConfig:
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise HFImportError(
                f"config (model_type '{self.model_type}') lacks the '{self._where(key)}' "
                "block: add it to the config.json"
            )
        return HFConfig(value, self.model_type, prefix=f"{self._where(key)}.")


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


def _max_seq_len(c: HFConfig, key: str, notes: list[str]) -> int:
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


def _gqa_attention(c: HFConfig, notes: list[str]) -> dict[str, Any]:
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


def _common(c: HFConfig, notes: list[str]) -> dict[str, Any]:
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
def _dense(c: HFConfig, notes: list[str]) -> dict[str, Any]:
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


def _mixtral(c: HFConfig, notes: list[str]) -> dict[str, Any]:
    spec = _common(c, notes) | _gqa_attention(c, notes)
    spec["moe"] = {
        "n_routed_experts": c.int_("num_local_experts"),
        "top_k": c.int_("num_experts_per_tok"),
        "expert_hidden": c.int_("intermediate_size"),
        "router": "softmax_topk",
    }
    return spec


def _deepseek(c: HFConfig, notes: list[str]) -> dict[str, Any]:
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


def _qwen_moe(c: HFConfig, notes: list[str]) -> dict[str, Any]:
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


def _dbrx(c: HFConfig, notes: list[str]) -> dict[str, Any]:
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


CONVERTERS: dict[str, Callable[[HFConfig, list[str]], dict[str, Any]]] = {
    **dict.fromkeys(DENSE_TYPES, _dense),
    "mixtral": _mixtral,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "dbrx": _dbrx,
}
