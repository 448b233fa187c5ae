"""ClusterSpec's NVLink domain and fabric: defaults, and the errors that name the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sim_scenarios_specs import moe_scenario

from moesim.catalog import load_gpu
from moesim.specs import ClusterSpec


def cluster(**kw) -> ClusterSpec:
    return ClusterSpec(**{"gpu": load_gpu("h100-sxm"), "nodes": 4, **kw})


def test_domain_defaults_to_a_node_and_to_the_gpus_own_rack():
    assert cluster().domain_gpus == 8
    gb = load_gpu("gb200")
    assert ClusterSpec(gpu=gb, nodes=36).domain_gpus == 72  # two NVL72 racks
    assert ClusterSpec(gpu=gb, nodes=4).domain_gpus == 16  # 16 GPUs of one rack


@pytest.mark.parametrize(
    ("domain", "nodes", "message"),
    [
        (12, 4, r"nvlink_domain_gpus \(12\) is not a multiple of gpus_per_node \(8\)"),
        (24, 4, r"nvlink_domain_gpus \(24\) must divide the cluster's 32 GPUs"),
        (3, 4, r"nvlink_domain_gpus \(3\) must divide gpus_per_node"),
    ],
)
def test_bad_domains_name_the_field_and_the_fix(domain: int, nodes: int, message: str):
    with pytest.raises(ValidationError, match=message):
        cluster(nvlink_domain_gpus=domain, nodes=nodes)


def test_domains_that_fit_are_taken():
    assert cluster(nvlink_domain_gpus=16).domain_gpus == 16
    assert cluster(nvlink_domain_gpus=4).domain_gpus == 4


def test_fabric_and_the_legacy_spine_factor_cannot_both_set_oversubscription():
    inter = {"nics_per_node": 8, "nic_Gbps": 400, "spine_oversubscription": 2.0}
    with pytest.raises(ValidationError, match=r"fabric\.leaf_oversubscription"):
        cluster(inter_node=inter, fabric={"leaf_oversubscription": 2.0})


def test_a_scenario_file_takes_the_new_keys():
    s = moe_scenario(
        cluster={
            "gpu": "h100-sxm",
            "nodes": 4,
            "gpus_per_node": 4,
            "nvlink_domain_gpus": 8,
            "fabric": {"kind": "top_of_rack", "leaf_nodes": 2, "leaf_oversubscription": 3},
        },
        parallel={"tp": 1, "pp": 2, "ep": 8},
    )
    assert s.cluster.domain_gpus == 8 and s.cluster.fabric.kind == "top_of_rack"


def test_the_default_domain_is_resolved_again_on_a_copy_with_fewer_gpus():
    # post-training builds its rollout cluster from a dump of the training one
    big = ClusterSpec(gpu=load_gpu("gb200"), nodes=36)
    small = ClusterSpec.model_validate({**big.model_dump(), "nodes": 2})
    assert (big.domain_gpus, small.domain_gpus) == (72, 8)
    h100 = ClusterSpec.model_validate({**cluster().model_dump(), "nodes": 1, "gpus_per_node": 4})
    assert h100.domain_gpus == 4
