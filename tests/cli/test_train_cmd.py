"""``moesim train``: the DESIGN.md contract per stage, the routing histogram the simulator reads,
and user errors with exit code 2."""

import json

import pytest

pytest.importorskip("torch")

COMMON = ("loss_first", "loss_last", "tokens_per_s", "device")


@pytest.mark.parametrize(
    "stage, model, keys",
    [
        ("sft", "tiny-dense", ()),
        ("dpo", "tiny-dense", ("margin_first", "margin_last")),
        ("grpo", "tiny-dense", ("reward_first", "reward_last")),
    ],
)
def test_json_has_the_contract_keys(moesim, stage, model, keys):
    res = moesim("train", stage, "--model", model, "--steps", "2", "--json")
    assert res.returncode == 0, res.output
    out = json.loads(res.stdout)
    for key in COMMON + keys:
        assert key in out, key
    assert out["device"] == "cpu" and out["stage"] == stage and out["steps"] == 2
    assert out["tokens_per_s"] > 0
    assert "expert_load_cv" not in out  # a dense model has no experts
    if stage == "dpo":
        assert out["loss_first"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    if stage == "grpo":
        assert 0 <= out["reward_first"] <= 1


def test_moe_pretrain_writes_a_histogram_the_simulator_reads(moesim, tmp_path):
    hist = tmp_path / "hist.json"
    res = moesim(
        "train", "pretrain", "--model", "tiny-moe", "--steps", "3", "--json",
        "--routing-histogram", hist,
    )  # fmt: skip
    assert res.returncode == 0, res.output
    out = json.loads(res.stdout)
    assert out["expert_load_cv"] >= 0 and out["loss_last"] < out["loss_first"]
    counts = json.loads(hist.read_text())["tokens_per_expert"]
    assert len(counts) == 8 and sum(counts) > 0  # tiny-moe: 8 experts

    scenario = tmp_path / "layer.yaml"
    scenario.write_text(
        "name: measured-routing\n"
        "model: tiny-moe\n"
        "cluster: {gpu: h100-sxm, nodes: 1, gpus_per_node: 8}\n"
        "parallel: {ep: 8, dp: 8}\n"
        "workload: {stage: moe_layer, tokens_per_gpu: 4096}\n"
        "routing: {distribution: histogram, histogram_file: hist.json}\n"
    )
    res = moesim("simulate", scenario, "--json")
    assert res.returncode == 0, res.output
    assert json.loads(res.stdout)["dispatch_s"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "rlhf"), "unknown stage 'rlhf'"),
        (("train", "pretrain", "--balance", "magic"), "--balance must be one of"),
        (("train", "pretrain", "--steps", "0"), "--steps must be at least 1"),
        (("train", "pretrain", "--device", "cuda"), "no CUDA device"),
        (("train", "pretrain", "--model", "tiny-dens"), "tiny-dense"),  # close match listed
        (("train", "pretrain", "--routing-histogram", "h.json"), "is dense"),
        (("train", "pretrain", "--batch-size", "0"), "--batch-size must be at least 1"),
        (("train", "pretrain", "--seq-len", "0"), "--seq-len must be at least 1"),
        (("train", "pretrain", "--device", "tpu"), "--device must be cpu, cuda or cuda:N"),
        (("train", "pretrain", "--seq-len", "100000"), "exceeds tiny-dense's max_seq_len 256"),
        (("train", "pretrain", "--lr", "inf"), "--lr must be a finite positive"),
        (
            ("train", "pretrain", "--model", "tiny-moe", "--routing-histogram", "/no/dir/h.json"),
            "its folder does not exist",
        ),
    ],
)
def test_user_errors_exit_2_without_a_traceback(moesim, tmp_path, args, message):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    res = moesim(*args, "--steps", "1") if "--steps" not in args else moesim(*args)
    assert res.returncode == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_balance_flags_are_the_presets_the_training_tests_measure():
    from moesim.cli.train_cmd import BALANCING, _balance
    from moesim.nn import BALANCE_PRESETS

    assert set(BALANCING) == set(BALANCE_PRESETS)
    bias = _balance("bias")
    assert bias.aux_loss_weight == 0.0 and bias.bias_update_rate == 1e-2  # measured, see nn
    aux = _balance("aux")
    assert aux.aux_loss_weight == 1e-2 and aux.bias_update_rate == 0.0
    none = _balance("none")
    assert none.aux_loss_weight == 0.0 and none.bias_update_rate == 0.0


def test_a_model_too_large_to_train_here_is_refused_before_torch_allocates(monkeypatch):
    pytest.importorskip("torch")
    from moesim.training import memory_check
    from tests.cli.conftest import run_main

    monkeypatch.setattr(memory_check, "available_host_bytes", lambda: 64 * 10**9)
    r = run_main("train", "pretrain", "--model", "llama-3-8b", "--steps", "1")
    assert r.returncode == 2, r.output
    assert "--model llama-3-8b:" in r.stderr and "this machine has 64.0 GB free" in r.stderr
