"""Benchmark of the included MoE layer (issue 8): is ``moesim.nn.MoELayer``'s fast path as fast
as the dense GEMMs it has to do, and faster than the loop reference and the Transformers block?

Shape legend: T tokens, D d_model, E routed experts, K top-k, F expert hidden, Fs shared-expert
hidden, H = K·F + n_shared·Fs (the hidden size of the dense-equivalent FFN).

For each shape (Mixtral-like, DeepSeek-like; from the catalog), token count and routing, it
times forward and forward + backward of:

- ``fast``: ``MoELayer(dispatch="grouped")``: router, sort, gather, grouped GEMM
  (``torch._grouped_mm`` where torch runs it: Hopper in bf16 and, in torch 2.13, the CPU; the
  per-expert loop elsewhere; the JSON's ``fast_path_kernel`` names it), weighted scatter-add,
  shared expert;
- ``loop``: the same module with ``dispatch="loop"`` (the plain loop over experts, the oracle);
- ``dense``: a dense SwiGLU FFN of hidden H on the T tokens: the same expert FLOPs in three
  plain GEMMs, the roofline the fast path cannot beat (the router's 2·T·D·E FLOPs are not in
  it, ≤ 0.5 % here);
- ``hf``: the Hugging Face Transformers Mixtral sparse MoE block with the layer's weights
  (Mixtral-like shape only, and only where ``import transformers`` works), with the experts
  implementation a ``from_pretrained`` model gets by default (``grouped_mm`` in Transformers 5,
  the eager per-expert loop before).

Routing: ``balanced`` (``force_uniform_routing``: round-robin, every expert gets exactly
T·K/E rows; the router is still computed) and ``natural`` (the random-init router on random
inputs; its load CV is recorded). The HF block always routes with its own (natural) router.

Every case first checks ``fast`` against ``loop`` on fresh random inputs (output, input gradient,
router-weight gradient; relative max error ≤ 1e-5 in fp32, 2e-2 in bf16) and aborts on a
mismatch. Timing is ``moesim.calibrate.timing.Timer`` (warm-up, CUDA events, medians over a
rotating pool of fresh random inputs). The JSON is rewritten after every case, so a run cut
short keeps what it measured; ``--append`` adds cases to an earlier file of the same device.

    python calibration/bench_moe_layer.py --device cuda  # -> calibration/moe_layer_bench_<gpu>.json
    python calibration/bench_moe_layer.py --device cpu --quick

This script parses the run, loops over the cases and writes the results. What is benchmarked
(shapes, FLOPs, memory, the modules) is ``moesim.calibrate.moe_layer_bench_modules``; one case
(check, time, summarise) ``moesim.calibrate.moe_layer_bench_case``; the correctness and
host-sync checks ``moesim.calibrate.moe_layer_bench_checks``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout without `pip install -e`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from moesim.calibrate.device import catalog_gpu_id, detect  # noqa: E402
from moesim.calibrate.moe_layer_bench_case import (  # noqa: E402
    GOALS,
    VARIANTS,
    Run,
    build_modules,
    run_case,
)
from moesim.calibrate.moe_layer_bench_checks import (  # noqa: E402
    TOLERANCE,
    CorrectnessError,
)
from moesim.calibrate.moe_layer_bench_modules import (  # noqa: E402
    SHAPES,
    fast_path_kernel,
    layer_spec,
    shape_info,
    transformers_version,
)
from moesim.calibrate.timing import Timer  # noqa: E402

TOKENS = (4096, 8192, 16384, 32768)
QUICK_TOKENS = (128, 256)
ROUTINGS = ("balanced", "natural")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GB = 1e9


# -- the run --------------------------------------------------------------------------------
COLUMNS = {
    "median_s": "median seconds per call, per variant (fast, loop, dense, hf) and pass",
    "tflops": "expert FLOPs (routed + shared: forward 2·T·D·H·3, fwd_bwd 3×) / median time",
    "fwd_bwd_ratio_to_dense": "dense fwd_bwd median / fast fwd_bwd median (1 = at the roofline)",
    "speedup_vs_loop": "loop fwd_bwd median / fast fwd_bwd median",
    "speedup_vs_hf": "Transformers block fwd_bwd median / fast fwd_bwd median",
    "load_cv": "std/mean of rows per expert under the case's routing (0 = balanced)",
    "correctness": "max |fast - loop| / max |loop| of the output and the gradients",
    "host_syncs": "synchronising CUDA calls in one fast forward / backward (sync debug mode)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes and token counts (smoke)")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shape names")
    p.add_argument("--tokens", default=None, help="comma-separated token counts")
    p.add_argument("--routing", default=",".join(ROUTINGS), help="balanced,natural")
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of fast,loop,dense,hf")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="bf16 on cuda, fp32 cpu")
    p.add_argument("--tol", type=float, default=None, help="correctness tolerance override")
    p.add_argument("--hf-impl", default=None, help="Transformers experts_implementation")
    p.add_argument("--seed", type=int, default=None, help="default: fresh, recorded in the JSON")
    p.add_argument("--budget-s", type=float, default=None, help="timer budget per timing")
    p.add_argument("--out", default=None, help="default calibration/moe_layer_bench_<dev>.json")
    p.add_argument("--append", action="store_true", help="keep the other cases of --out")
    p.add_argument("--profile", action="store_true", help="a torch.profiler table per case")
    p.add_argument("--table", metavar="JSON", help="print a results JSON as a Markdown table")
    return p.parse_args(argv)


def split(arg: str, known, name: str) -> list[str]:
    items = [s for s in arg.split(",") if s]
    if unknown := sorted(set(items) - set(known)):
        raise SystemExit(f"unknown {name} {unknown}: use {','.join(known)}")
    return items


def make_timer(device: str, quick: bool, budget_s: float | None) -> Timer:
    if device == "cuda":
        return Timer("cuda", warmup=3, min_repeats=5, max_repeats=30, budget_s=budget_s or 1.0)
    if quick:
        return Timer("cpu", warmup=1, min_repeats=3, max_repeats=15, budget_s=budget_s or 0.05)
    return Timer("cpu", warmup=1, min_repeats=3, max_repeats=10, budget_s=budget_s or 0.5)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def header(device: str, dtype_name: str, quick: bool, seed: int, timer: Timer) -> dict:
    """Device, versions, date and settings: the top of the JSON."""
    gpu_id = None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA GPU; try --device cpu --quick")
        gpu_id = catalog_gpu_id(torch.cuda.get_device_name(0)) or "uncatalogued"
    info = detect(device, gpu_id)
    env = info.environment
    keys = ("torch", "cuda", "cudnn", "driver", "python", "compute_capability")
    versions = {k: env.get(k) for k in keys}
    versions |= {"transformers": transformers_version(), "moesim": git_commit()}
    mem = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None
    return {
        "benchmark": "moe_layer",
        "issue": 8,
        "device": {
            "kind": info.kind,
            "name": info.name,
            "profile_id": info.profile_id,
            "memory_GB": round(mem / GB, 1) if mem else None,
        },
        "versions": versions,
        "date": env["date"],
        "dtype": dtype_name,
        "quick": quick,
        "seed": seed,
        "timer": {
            k: getattr(timer, k)
            for k in ("warmup", "min_repeats", "max_repeats", "budget_s", "pool")
        },
        "goals": GOALS,
        "columns": COLUMNS,
        "shapes": {},
        "cases": [],
    }


def case_key(c: dict) -> tuple:
    return (c["shape"], c["tokens"], c["routing"])


def write(result: dict, out: Path) -> None:
    """Rewrite the JSON (atomically), cases in (shape, tokens, routing) order."""
    result["cases"].sort(key=lambda c: (list(SHAPES).index(c["shape"]), c["tokens"], c["routing"]))
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it wrote to ``--out``. Raises CorrectnessError when the
    fast path disagrees with the loop reference."""
    args = parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print(markdown_table(result))
        return result
    shapes = split(args.shapes, SHAPES, "shapes")
    routings = split(args.routing, ROUTINGS, "routing")
    variants = split(args.variants, VARIANTS, "variants")
    if "fast" not in variants:
        raise SystemExit("--variants must include fast: every ratio is relative to it")
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else None
    tokens = tokens or list(QUICK_TOKENS if args.quick else TOKENS)
    dtype_name = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    timer = make_timer(args.device, args.quick, args.budget_s)

    result = header(args.device, dtype_name, args.quick, seed, timer)
    default_out = REPO / "calibration" / f"moe_layer_bench_{result['device']['profile_id']}.json"
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        old = json.loads(out.read_text())
        if old.get("device", {}).get("name") != result["device"]["name"]:
            raise SystemExit(f"--append: {out} holds {old.get('device')}, not this device")
        result["shapes"], result["cases"] = old.get("shapes", {}), old.get("cases", [])
    torch.manual_seed(seed)
    run = Run(
        device=args.device,
        dtype=DTYPES[dtype_name],
        dtype_name=dtype_name,
        variants=variants,
        timer=timer,
        generator=torch.Generator(device=args.device).manual_seed(seed),
        tol=args.tol if args.tol is not None else TOLERANCE[dtype_name],
        memory_bytes=(result["device"]["memory_GB"] or 0) * GB or None,
        out=out,
        profile=args.profile,
    )
    n = len(shapes) * len(tokens) * len(routings)
    print(
        f"MoE layer benchmark on {result['device']['name']} ({dtype_name}), seed {seed}, "
        f"transformers {result['versions']['transformers']}: {n} cases -> {out}",
        flush=True,
    )
    i = 0
    for shape in shapes:
        mods = build_modules(run, layer_spec(shape, args.quick), args.hf_impl)
        result["shapes"][shape] = shape_info(mods.spec) | {
            "fast_path_kernel": fast_path_kernel(mods.layer),
            "hf": mods.hf_info,
        }
        for t in tokens:
            for routing in routings:
                i += 1
                case = run_case(run, mods, shape, t, routing)
                result["cases"] = [c for c in result["cases"] if case_key(c) != case_key(case)]
                result["cases"].append(case)
                write(result, out)
                print(f"[{i}/{n}] {progress_line(case)}", flush=True)
        del mods
        if run.device == "cuda":
            torch.cuda.empty_cache()
    return result


def markdown_table(result: dict) -> str:
    """The README's table: fwd+bwd medians (ms), the issue's ratios, the fast path's TFLOPS."""

    def ms(case: dict, v: str) -> str:
        m = case["median_s"].get(v)
        return f"{m['fwd_bwd'] * 1e3:.3g}" if m else "-"

    def x(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "-"

    rows = [
        "| shape | tokens | routing | fast | loop | dense | hf | ratio to dense | vs loop "
        "| vs hf | fast TFLOPS |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cases"]:
        head = f"| {c['shape']} | {c['tokens']} | {c['routing']} |"
        if c["status"] != "ok":
            rows.append(f"{head} skipped ({c['reason']}) |" + " |" * 7)
            continue
        rows.append(
            f"{head} {ms(c, 'fast')} | {ms(c, 'loop')} | {ms(c, 'dense')} | {ms(c, 'hf')} "
            f"| {x(c['fwd_bwd_ratio_to_dense'])} | {x(c['speedup_vs_loop'])} "
            f"| {x(c['speedup_vs_hf'])} | {c['tflops']['fast']['fwd_bwd']:.3g} |"
        )
    return "\n".join(rows)


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.3g} ms"


def progress_line(case: dict) -> str:
    head = f"{case['shape']} T={case['tokens']} {case['routing']}"
    if case["status"] != "ok":
        return f"{head}: skipped ({case['reason']})"
    med, c = case["median_s"], case["correctness"]
    parts = [
        f"fast fwd {fmt_s(med['fast']['fwd'])} fwd+bwd {fmt_s(med['fast']['fwd_bwd'])}"
        f" ({case['tflops']['fast']['fwd_bwd']:.3g} TFLOPS)"
    ]
    for key, label in (
        ("fwd_bwd_ratio_to_dense", "of dense"),
        ("speedup_vs_loop", "vs loop"),
        ("speedup_vs_hf", "vs hf"),
    ):
        v = case[key]
        parts.append(f"{label} {v:.2f}x" if v is not None else f"{label} -")
    parts.append(f"load cv {case['load_cv']:.2f}")
    errs = [v for k, v in c.items() if k.endswith("_rel_err") and not k.startswith("hf_")]
    parts.append(f"max err {max(errs):.1g}")
    if "host_syncs" in case:
        parts.append(f"host syncs fwd {case['host_syncs']['fwd']['count']}")
    return f"{head}: " + ", ".join(parts)


if __name__ == "__main__":
    try:
        main()
    except CorrectnessError as e:
        sys.exit(f"ABORT: {e}")
