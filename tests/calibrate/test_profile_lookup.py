"""Where a profile id is found: the repository's calibration/ whatever the working directory,
then ./calibration; a measured ``<dir>/<id>.json`` wins over a published
``<dir>/published/<id>.json``, which wins over the default; a missing id names every place
searched. The schema stays backward compatible: the committed profiles load, and
``links.pcie`` is optional."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from moesim.catalog import load_gpu
from moesim.sim.costmodel import CostModel, OpWork
from moesim.sim.profile import (
    DEFAULT_PROFILE_PATH,
    Profile,
    load_profile,
    profile_kind,
    profile_label,
    profile_search_dirs,
    repo_calibration_dir,
    resolve_profile,
)

REPO_CALIBRATION = repo_calibration_dir()
needs_checkout = pytest.mark.skipif(
    REPO_CALIBRATION is None or not (REPO_CALIBRATION / "cpu.json").is_file(),
    reason="not running from a source checkout with calibration/cpu.json",
)


def _profile_named(device: str) -> dict:
    raw = json.loads(DEFAULT_PROFILE_PATH.read_text())
    raw["device"] = device
    return raw


@needs_checkout
def test_a_profile_id_resolves_the_same_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no calibration/ here
    assert resolve_profile("cpu").device == "cpu"
    assert resolve_profile(None, "cpu").device == "cpu"  # the scenario's GPU id


@needs_checkout
def test_the_repository_comes_before_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "cpu.json").write_text(json.dumps(_profile_named("cwd-cpu")))
    (tmp_path / "calibration" / "mine.json").write_text(json.dumps(_profile_named("mine")))
    monkeypatch.chdir(tmp_path)
    dirs = profile_search_dirs()
    assert dirs == (REPO_CALIBRATION, Path.cwd() / "calibration")
    assert resolve_profile("cpu").device == "cpu"  # the repository's
    assert resolve_profile("mine").device == "mine"  # only in the working directory
    explicit = tmp_path / "first"
    explicit.mkdir()
    (explicit / "cpu.json").write_text(json.dumps(_profile_named("explicit")))
    assert resolve_profile("cpu", search_dirs=(explicit,)).device == "explicit"


def _published_named(device: str) -> dict:
    raw = _profile_named(device)
    return {**raw, "schema_version": 2, "kind": "published"}


def test_measured_wins_over_published_which_wins_over_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first / "published", second / "published"):
        d.mkdir(parents=True)
    gpu = "test-gpu-x"
    # nothing anywhere: the default for a scenario's GPU, an error for a named id
    assert profile_kind(resolve_profile(None, gpu, (first, second))) == "default"
    with pytest.raises(FileNotFoundError, match=f"published/{gpu}.json"):
        resolve_profile(gpu, search_dirs=(first, second))
    # a published profile, even in the first directory's published/ folder ...
    (first / "published" / f"{gpu}.json").write_text(json.dumps(_published_named(gpu)))
    for name in (None, gpu):
        p = resolve_profile(name, gpu, (first, second))
        assert profile_label(p) == {"device": gpu, "kind": "published"}
    # ... loses to a measured one, even in a later directory
    (second / f"{gpu}.json").write_text(json.dumps(_profile_named(gpu)))
    for name in (None, gpu):
        p = resolve_profile(name, gpu, (first, second))
        assert profile_label(p) == {"device": gpu, "kind": "measured"}  # v1: no kind


def test_a_version_1_profile_loads_and_means_what_it_meant():
    """No kind, no fp8 curves, no backward curve: fp8 GEMMs read the 16-bit curve against the
    fp8 peak, and the attention backward the forward's curve."""
    v1 = load_profile(DEFAULT_PROFILE_PATH)
    assert (v1.schema_version, v1.kind, v1.compute_fp8) == (1, None, None)
    assert profile_kind(v1) == "default"
    if REPO_CALIBRATION is not None and (REPO_CALIBRATION / "cpu.json").is_file():
        assert profile_kind(load_profile(REPO_CALIBRATION / "cpu.json")) == "measured"
    gpu = load_gpu("h100-sxm")
    flops = 1e13
    fp8 = CostModel(gpu, v1, "fp8")
    t = fp8.time_s(OpWork("ffn", "gemm", flops, 1e6))
    assert t == pytest.approx(flops / (1978.9e12 * v1.compute["gemm"](flops)) + fp8.launch_s)
    bf16 = CostModel(gpu, v1, "bf16")
    fwd = OpWork("a", "attention", flops, 1e6)
    assert bf16.time_s(OpWork("a", "attention", flops, 1e6, backward=True)) == bf16.time_s(fwd)
    raw = _profile_named("x")
    raw["schema_version"] = 3
    with pytest.raises(ValidationError, match="schema_version"):
        Profile.model_validate(raw)


def test_a_missing_id_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        resolve_profile("no-such-device", search_dirs=(tmp_path / "extra",))
    msg = str(e.value)
    assert "calibration/no-such-device.json" in msg
    for d in profile_search_dirs((tmp_path / "extra",)):
        assert str(d / "no-such-device.json") in msg


def test_committed_profiles_still_load_and_pcie_is_optional():
    committed = [DEFAULT_PROFILE_PATH]
    if REPO_CALIBRATION is not None and (REPO_CALIBRATION / "cpu.json").is_file():
        committed.append(REPO_CALIBRATION / "cpu.json")
    for path in committed:
        assert load_profile(path).links.pcie is None  # neither measured a host link
    raw = _profile_named("x")
    raw["links"]["pcie"] = {"value": 0.78, "source": "test"}
    assert Profile.model_validate(raw).links.pcie.value == 0.78
    raw["links"]["pcie"]["value"] = 1.5
    with pytest.raises(ValidationError, match="pcie"):
        Profile.model_validate(raw)


def test_a_file_that_is_not_a_profile_names_the_file_and_its_fields(tmp_path):
    """A bad --profile was blamed on the scenario and printed as pydantic's raw dump."""
    from moesim.sim.profile import ProfileError, load_profile

    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1}')
    with pytest.raises(ProfileError, match=r"profile .*bad\.json: not a moesim .*device: Field"):
        load_profile(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ProfileError, match="cannot read it as JSON"):
        load_profile(broken)
