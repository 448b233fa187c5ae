"""``moesim inspect``, ``validate``, ``schema`` and ``import-hf``: the foundation's commands."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from moesim.analytic.flops import token_flops
from moesim.analytic.params import count_params
from moesim.cli.app import (
    UserError,
    app,
    console,
    print_json,
    refuse_overwriting_inputs,
    write_output,
)
from moesim.scenario_io import (
    EXPECT_KEY,
    ScenarioError,
    file_kind,
    load_model_arg,
    load_scenario,
    load_yaml,
)
from moesim.scenario_schema import file_schema
from moesim.specs import ModelSpec, Scenario


def _billions(x: float) -> str:
    return f"{x / 1e9:,.3f} B"


def inspect_model(model: ModelSpec, seq_len: int | None = None) -> dict:
    """The ``inspect --json`` object: counts, FLOPs and the per-component breakdown."""
    counts = count_params(model)
    s = model.max_seq_len if seq_len is None else seq_len
    flops = token_flops(model, s)  # ValueError for s <= 0
    # headline counts follow the published convention: the main model (DeepSeek-V3's 671 B /
    # 37 B); a multi-token-prediction module is listed apart (arXiv:2412.19437 §2.2, HF card)
    out = {
        "name": model.name,
        "params_total": counts.total_main,
        "params_active": counts.active_main,
        "params_total_main": counts.total_main,
        "params_active_main": counts.active_main,
        "model_flops_per_token": flops.model_flops,
        "forward_flops_per_token": flops.forward,
        "seq_len": s,
        "params_breakdown": counts.breakdown(),
        "layers": model.n_layers + model.n_encoder_layers,
        "moe_layers": model.n_moe_layers + model.n_moe_encoder_layers,
        "source": model.source,
    }
    if counts.mtp:
        out["params_mtp"] = counts.mtp
        out["params_mtp_active"] = counts.mtp_active
        out["params_total_with_mtp"] = counts.total
    if model.published_params_total:
        out["published_params_total"] = model.published_params_total
    if model.published_params_active:
        out["published_params_active"] = model.published_params_active
    return out


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="catalog id (e.g. mixtral-8x7b) or a model YAML")],
    seq_len: Annotated[int | None, typer.Option(help="sequence length for FLOPs")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Parameters (total, active, per component) and FLOPs per token of a model."""
    if seq_len is not None and seq_len <= 0:
        raise UserError(
            f"--seq-len must be a positive number of tokens, got {seq_len}: give e.g. "
            "--seq-len 4096, or leave it out for the model's max_seq_len"
        )
    info = inspect_model(load_model_arg(model), seq_len)
    if as_json:
        print_json(info)
        return
    # names and sources come from users' files: escaped, so that rich prints them as written
    name = escape(info["name"])
    table = Table(title=f"{name}  ({info['layers']} layers, {info['moe_layers']} MoE)")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    for k, v in info["params_breakdown"].items():
        if v and k != "mtp":
            table.add_row(k, _billions(v))
    table.add_row("[bold]total[/]", f"[bold]{_billions(info['params_total'])}[/]")
    table.add_row("[bold]active per token[/]", f"[bold]{_billions(info['params_active'])}[/]")
    if "params_mtp" in info:  # apart from the headline, as the model's authors count it
        table.add_section()
        table.add_row("mtp module (apart)", _billions(info["params_mtp"]))
        table.add_row("total with mtp", _billions(info["params_total_with_mtp"]))
    console.print(table)
    console.print(
        f"model FLOPs per token (fwd+bwd, seq {info['seq_len']}): "
        f"{info['model_flops_per_token'] / 1e9:,.2f} GFLOP"
    )
    if info.get("published_params_total"):
        console.print(
            f"published: {info['published_params_total'] / 1e9:g} B total"
            + (
                f", {info['published_params_active'] / 1e9:g} B active"
                if info.get("published_params_active")
                else ""
            )
        )
    if info["source"]:
        console.print(f"[dim]source: {escape(info['source'])}[/]")


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="a scenario, comparison, sweep or plan file")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a moesim file; print the resolved layout or every problem with its line."""
    data, _ = load_yaml(file)
    kind = file_kind(data)
    if kind == "scenario" and EXPECT_KEY in data:  # a published case: its expect block too
        from moesim.reproduce.cases import load_case

        case = load_case(file)
        summaries = [_scenario_summary(case.scenario)] if case.scenario else []
        if case.scenario is None:  # unsupported: the reason stands in for the scenario
            summaries = [{"name": case.id, "line": f"{case.id}: {case.expect.unsupported}"}]
        summaries[0]["expect"] = case.expect.model_dump(by_alias=True)
        summaries[0]["line"] += f"; expect {case.expect.metric} = {case.expect.value:g}"
    elif kind == "scenario":
        summaries = [_scenario_summary(load_scenario(file))]
    elif kind == "comparison":
        from moesim.cli.report_cmd import load_comparison

        summaries = [_scenario_summary(s) for s in load_comparison(file)[2]]
    elif kind == "sweep":
        summaries = [_sweep_summary(file)]
    else:
        summaries = [_plan_summary(file)]
    if as_json:
        print_json(summaries[0] if kind == "scenario" else {"kind": kind, "items": summaries})
        return
    for summary in summaries:
        console.print(f"[green]ok[/] {escape(summary['line'])}", highlight=False)


def _scenario_summary(s: Scenario) -> dict:
    # a run `simulate` would refuse for its size is not "ok" (moesim.sim.limits)
    from moesim.sim.limits import SimulationTooLarge, check_simulation_size

    try:
        check_simulation_size(s)
    except SimulationTooLarge as e:
        raise UserError(f"{s.name}: {e}") from None
    p = s.parallel
    return {
        "name": s.name,
        "model": s.model.name,
        "gpu": s.cluster.gpu.name,
        "gpus": s.gpus,
        "parallel": p.model_dump(),
        "expert_data_parallel": p.edp if s.model.is_moe else None,
        "stage": s.workload.stage,
        "line": (
            f"{s.name}: {s.model.name} on {s.gpus}× {s.cluster.gpu.name} "
            f"({s.cluster.nodes} nodes), tp {p.tp} · cp {p.cp} · pp {p.pp} · dp {p.dp} "
            f"· ep {p.ep} · etp {p.etp}, stage {s.workload.stage}"
        ),
    }


#: points of a sweep that ``validate`` builds (a few ms each); past them it says how many it
#: checked, so a 100,000-point sweep validates in seconds
VALIDATE_SWEEP_POINTS = 1_000


def _sweep_summary(file: Path) -> dict:
    """A sweep is valid when its base is; points that cannot be built are counted (they become
    error rows when the sweep runs)."""
    from moesim.scenario_io import scenario_from_dict
    from moesim.sweep import expand, load_sweep

    spec = load_sweep(file)
    scenario_from_dict(spec.base, str(file), base=spec.base_dir)
    bad = []
    checked = 0
    for _, d in itertools.islice(expand(spec), VALIDATE_SWEEP_POINTS):
        checked += 1
        try:
            scenario_from_dict(d, base=spec.base_dir)
        except ScenarioError as e:
            bad.append(f"{d['name']}: {e}")
    if checked and len(bad) == checked:
        raise UserError(
            f"{file}: none of the {checked:,} points checked can be built, so the sweep would "
            f"only write errors; the first: {bad[0]}"
        )
    line = f"sweep {spec.name}: {spec.size:,} points, {checked - len(bad):,} buildable"
    if checked < spec.size:
        line += f" of the first {checked:,} checked"
    if bad:
        line += f"; {len(bad)} will be error rows, e.g. {bad[0]}"
    return {"name": spec.name, "points": spec.size, "unbuildable": bad, "line": line}


def _plan_summary(file: Path) -> dict:
    from moesim.plan import candidates, load_plan

    spec = load_plan(file)
    considered, scenarios = candidates(spec)
    line = f"plan {spec.name}: {considered} layouts in the search, {len(scenarios)} buildable"
    return {"name": spec.name, "considered": considered, "buildable": len(scenarios), "line": line}


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write to a file")] = None,
) -> None:
    """The JSON Schema of scenario files as written: catalog ids or inline specs."""
    text = json.dumps(file_schema(), indent=2)
    if out is None:
        print(text)
    else:
        write_output(out, text + "\n")
        console.print(f"wrote {escape(str(out))}", highlight=False)


@app.command("import-hf")
def import_hf(
    config: Annotated[Path, typer.Argument(help="a Hugging Face config.json")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the YAML here")] = None,
    name: Annotated[str | None, typer.Option(help="model name (default: from the config)")] = None,
) -> None:
    """Turn a Mixtral / DeepSeek-V2/V3 / Qwen2/3-MoE / DBRX / Llama config.json into a model
    YAML."""
    from moesim.hf_import import HFImportError, model_yaml_from_hf

    refuse_overwriting_inputs("--out", out, config)
    try:
        text = model_yaml_from_hf(config, name=name)
    except HFImportError as e:
        raise UserError(str(e)) from None
    if out is None:
        print(text, end="")
    else:
        write_output(out, text)
        console.print(f"wrote {escape(str(out))}", highlight=False)
