"""User errors through the real entry point: a message and exit code 2, never a traceback, for
binary input files, broken model files, unwritable ``-o`` paths and non-positive lengths; and
messages printed as written, even when they quote text that looks like rich markup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.catalog import load_model
from moesim.cli.inspect_cmd import inspect_model

BINARY = b"\x7fELF\x02\x01\x01\x00" + bytes(range(0x80, 0x100))

SCENARIO = """\
name: {name}
model: {model}
cluster: {{gpu: h100-sxm, nodes: 1}}
parallel: {{ep: 8}}
workload: {{stage: pretrain, seq_len: 4096, global_batch: 64}}
"""


def assert_user_error(r, *fragments: str) -> None:
    assert r.returncode == 2, r.output
    assert "Traceback" not in r.output
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


# -- files that are not text -----------------------------------------------------------------
@pytest.mark.parametrize("command", ["validate", "inspect", "import-hf"])
def test_binary_input_file_is_a_clear_error(moesim, tmp_path: Path, command: str) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(BINARY)
    r = moesim(command, path)
    assert_user_error(r, f"{path}", "not UTF-8 text")


def test_scenario_naming_a_broken_model_yaml(moesim, tmp_path: Path) -> None:
    (tmp_path / "broken-model.yaml").write_text("a: [\n")
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(name="s", model="broken-model.yaml"))
    r = moesim("validate", path)
    assert_user_error(r, f"{path}:2: model: ", "broken-model.yaml:2: not valid YAML")


# -- -o paths that cannot be written ------------------------------------------------------------
def test_schema_to_an_unwritable_path(moesim, tmp_path: Path) -> None:
    out = tmp_path / "absent-dir" / "x.json"
    r = moesim("schema", "-o", out)
    assert_user_error(r, f"{out}: cannot write it", "create its folder first")
    assert not out.exists()


def test_import_hf_to_an_unwritable_path(moesim, tmp_path: Path) -> None:
    config = Path(__file__).parents[1] / "data" / "hf" / "mixtral-8x7b.json"
    out = tmp_path / "absent-dir" / "d" / "x.yaml"
    r = moesim("import-hf", config, "-o", out)
    assert_user_error(r, f"{out}: cannot write it")


# -- text that looks like markup is printed as written ---------------------------------------
def test_unknown_id_that_looks_like_markup(moesim) -> None:
    r = moesim("inspect", "[/]mixtral")
    assert_user_error(r, "unknown model id '[/]mixtral'")


def test_unknown_key_that_looks_like_markup(moesim, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(name="s", model="mixtral-8x7b") + '"[red]bad": 1\n')
    r = moesim("validate", path)
    assert_user_error(r, f"{path}:6: [red]bad: unknown key '[red]bad'")


def test_validate_prints_a_name_that_looks_like_markup(moesim, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(name='"[/]x [bold]y"', model="mixtral-8x7b"))
    r = moesim("validate", path)
    assert r.returncode == 0, r.output
    assert "ok [/]x [bold]y: mixtral-8x7b on 8×" in r.stdout


def test_inspect_table_prints_name_and_source_as_written(moesim, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        'name: "[/]m"\nsource: "see [1] and [/]"\nvocab_size: 256\nn_layers: 2\nd_model: 64\n'
        "n_heads: 4\nffn_hidden: 128\n"
    )
    r = moesim("inspect", path)
    assert r.returncode == 0, r.output
    assert "[/]m" in r.stdout
    assert "source: see [1] and [/]" in r.stdout


# -- sequence lengths --------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", ["-5", "0"])
def test_inspect_refuses_a_non_positive_seq_len(moesim, seq_len: str) -> None:
    r = moesim("inspect", "mixtral-8x7b", f"--seq-len={seq_len}", "--json")
    assert_user_error(r, f"--seq-len must be a positive number of tokens, got {seq_len}")
    assert r.stdout == ""


def test_inspect_model_zero_seq_len_is_not_the_default() -> None:
    m = load_model("mixtral-8x7b")
    assert inspect_model(m, None)["seq_len"] == m.max_seq_len
    with pytest.raises(ValueError, match="seq_len must be a positive number of tokens, got 0"):
        inspect_model(m, 0)


def test_inspect_seq_len_one_is_allowed(moesim) -> None:
    r = moesim("inspect", "tiny-dense", "--seq-len=1", "--json")
    assert r.returncode == 0, r.output
    assert json.loads(r.stdout)["seq_len"] == 1


def test_simulate_and_compare_print_names_that_look_like_markup(moesim, tmp_path: Path) -> None:
    """A scenario named '[/]x' raised rich's MarkupError in the result tables."""
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(name='"[/]x [red]y"', model="mixtral-8x7b"))
    for args in (("simulate", path), ("compare", path, path)):
        r = moesim(*args)
        assert r.returncode == 0, r.output
        assert "[/]x [red]y" in r.stdout


def test_sweep_refuses_fewer_than_one_worker(moesim, tmp_path: Path) -> None:
    r = moesim(
        "sweep", "scenarios/sweeps/mixtral-ep-vs-skew.yaml", "--workers", "-3",
        "-o", str(tmp_path / "s.csv"),
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.output
    assert "--workers" in r.output
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("simulate", "{f}", "--trace", "{f}"),
        ("report", "{f}", "-o", "{f}"),
        ("compare", "{f}", "--html", "{f}"),
        ("sweep", "{sweep}", "-o", "{sweep}"),
        ("sweep", "{sweep}", "--html", "{sweep}"),
        ("plan", "{plan}", "--html", "{plan}"),
        ("import-hf", "{hf}", "-o", "{hf}"),
    ],
)
def test_no_command_writes_over_its_input(moesim, tmp_path: Path, args: tuple[str, ...]) -> None:
    """`simulate F --trace F` and its kin replaced the input without a word; now a named error
    before any work, and the input is byte for byte what it was."""
    root = Path(__file__).parents[2]
    inputs = {
        "f": root / "scenarios" / "mixtral-8x7b-pretrain-256xh100.yaml",
        "sweep": root / "scenarios" / "sweeps" / "mixtral-ep-vs-skew.yaml",
        "plan": root / "scenarios" / "plans" / "mixtral-pretrain-30-days.yaml",
        "hf": root / "tests" / "data" / "hf" / "mixtral-8x7b.json",
    }
    copies = {}
    for key, src in inputs.items():
        dst = tmp_path / src.name
        dst.write_bytes(src.read_bytes())
        copies[key] = dst
    argv = [a.format(**{k: str(v) for k, v in copies.items()}) for a in args]
    used = next(copies[k] for k in copies if str(copies[k]) in argv)
    before = used.read_bytes()
    r = moesim(*argv)
    assert_user_error(r, "would overwrite the input")
    assert used.read_bytes() == before


def test_a_sweep_whose_every_point_fails_is_an_error(moesim, tmp_path: Path) -> None:
    """A key typo in the grid made every row an error and still exited 0."""
    base = Path(__file__).parents[2] / "scenarios" / "mixtral-8x7b-pretrain-256xh100.yaml"
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(f"name: bad\nbase: {base}\ngrid:\n  parallel.epp: [1, 2]\n")
    r = moesim("sweep", str(sweep), "-o", str(tmp_path / "bad.csv"))
    assert_user_error(r, "every one of the 2 points failed", "epp")
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("mixtral-ep-vs-skew", "mixtral-ep-vs-skew"),
        ("../../x", "x"),
        ("a/b c", "a-b-c"),
        ("x" * 300, "x" * 120),
        ("///", "sweep"),
    ],
)
def test_a_sweeps_default_output_stays_inside_out(name: str, stem: str) -> None:
    """`name: ../../x` wrote outside ./out, a `/` made folders, 300 characters failed."""
    from moesim.cli.report_cmd import safe_file_stem

    assert safe_file_stem(name) == stem
