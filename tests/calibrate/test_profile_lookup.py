"""Where a profile id is found: the repository's calibration/ whatever the working directory,
then ./calibration; a missing id names every place searched. The schema stays backward
compatible: the committed profiles load, and ``links.pcie`` is optional."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from moesim.sim.profile import (
    DEFAULT_PROFILE_PATH,
    Profile,
    load_profile,
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
