"""Small specs that keep the stage tests fast on a 2-core CPU (not a test module)."""

from moesim.specs import ModelSpec


def small_spec(moe: dict | None = None, **changes) -> ModelSpec:
    base = dict(
        name="small", vocab_size=256, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
        ffn_hidden=128,
    )  # fmt: skip
    if moe is not None:
        base["moe"] = {"n_routed_experts": 8, "top_k": 2, "expert_hidden": 32} | moe
    return ModelSpec(**(base | changes))
