"""Plan files shared by the capacity-planning tests (test_plan.py: training searches;
test_plan_serving.py: serving searches; test_plan_pd.py: disaggregated serving searches)."""

from __future__ import annotations

PLAN = {
    "name": "mixtral-plan",
    "model": "mixtral-8x7b",
    "gpu": "h100-sxm",
    "workload": {"stage": "pretrain", "seq_len": 4096, "global_batch": 512, "total_tokens": 1e11},
    "search": {"nodes": [2, 4, 8], "tp": [1, 2], "pp": [1, 2, 4], "ep": [1, 8]},
    "constraints": {"deadline_days": 30},
    "simulate_max": 500,
}

# serving plans, through the inference simulator
SERVING_PLAN = {
    "name": "mixtral-serving",
    "model": "mixtral-8x7b",
    "gpu": "h100-sxm",
    "precision": {"compute": "bf16", "weights_inference": "bf16", "kv_cache": "bf16"},
    "workload": {"stage": "inference", "prompt_len": 512, "output_len": 64,
                 "arrival_rate_per_s": 60, "duration_s": 10, "seed": 0},
    "search": {"gpus": [2, 4, 8], "tp": [2], "pp": [1], "ep": [1, 2, 4]},
    "constraints": {"ttft_p99_s": 1.0, "tpot_p99_s": 0.02},
    "simulate_max": 20,
}  # fmt: skip
