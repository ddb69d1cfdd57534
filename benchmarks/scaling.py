"""How the sequence, the step time and the memory grow with the number of subjects.

    python benchmarks/scaling.py --quick                     # CPU: mid-size model, 512^2, N = 1..8
    python benchmarks/scaling.py --model tiny --csv tiny.csv --plot tiny.png
    python benchmarks/scaling.py --full-size --csv gpu.csv --plot gpu.png   # one GPU, a few minutes

Three variants on the same synthetic canvases (N disc-shaped subjects on a grid):
  layered   LayerComposer: each layer keeps only its visible tokens (transparent latent pruning)
  unpruned  every layer's whole canvas-sized token grid, as methods that concatenate one full
            reference per subject do
  collage   one flattened reference image: stock FLUX.1 Kontext
Sweeps: N = 1, 2, 4, 8, 16 at a fixed total visible area (20% of the canvas shared by all
subjects) and at an area that grows with N (4.5% of the canvas per subject); 512^2 and 1024^2.

A step is one transformer call on [text | noisy | conditioning] with random inputs of the right
shapes (its cost does not depend on the values): the median of at least --reps calls after
--warmup, taken in rounds over all sequence lengths so that other load hits all of them alike.
Peak memory: on CUDA the allocator's peak during a step (weights included); on a CPU the weights
plus the step's rise of the process's peak resident memory (reset before it via
/proc/self/clear_refs). The models:
  tiny   builtin:tiny's transformer (1 + 1 blocks, 32 wide)
  mid    the FLUX.1 transformer with 1 + 1 blocks, 768 wide (6 heads x 128, the real RoPE axes):
         at 512^2 its attention/linear cost balance is that of the full model at 1024^2
  full   the FLUX.1 Kontext [dev] architecture (19 + 38 blocks, 3072 wide), random bf16 weights
         built on the GPU (nothing downloaded)
Each table also gives a step's compute floor: its matmul FLOPs over the measured matmul rate.
With --prepare (default) it ends with `prepare.py`'s table: prepare, cold and after a move.
On a CPU, a case whose estimated step time exceeds --max-step-s is listed without a time, and
steps run on one thread (--threads): on a shared 2-core machine two threads wait on each other
whenever another process takes a core, and their times scatter by 4x.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import re
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# diffusers and transformers warn about things that do not matter here (a missing torchvision).
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
for _noisy in ("torchao", "torch.utils._pytree"):  # torchao, if installed, logs what it lacks
    logging.getLogger(_noisy).setLevel(logging.ERROR)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `prepare` beside this file

from layercomposer.geometry import Extent  # noqa: E402
from layercomposer.layers import CanvasLayer  # noqa: E402
from layercomposer.tokens import TEXT_TOKENS, grid_position_ids, plan_tokens  # noqa: E402

CSV_COLUMNS = ("variant", "subjects", "area", "resolution", "cond_tokens", "seq_len", "step_ms", "peak_mb")  # fmt: skip
VARIANTS = ("layered", "unpruned", "collage")
AREAS = ("fixed", "growing")
FIXED_FRACTION = 0.20  # of the canvas, shared by all subjects
GROWING_FRACTION = 0.045  # of the canvas, per subject: 16 subjects cover 72%
MIN_TIMED_S, MAX_REPS = 5.0, 25  # fast sweeps get more rounds: a median noise can't move
MODEL_CONFIGS = {
    "mid": dict(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=6,
                joint_attention_dim=768, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)),
    "full": dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)),
}  # fmt: skip


# --- canvases and sequences -------------------------------------------------------------------


def disc_cutout(radius: int) -> np.ndarray:
    """(2r, 2r, 4) uint8: an opaque grey disc on transparency (a subject's cut-out)."""
    yy, xx = np.mgrid[: 2 * radius, : 2 * radius] + 0.5 - radius
    rgba = np.full((2 * radius, 2 * radius, 4), 128, np.uint8)
    rgba[..., 3] = np.where(yy**2 + xx**2 <= radius**2, 255, 0)
    return rgba


def subject_layers(subjects: int, area: str, size: int) -> list[CanvasLayer]:
    """N unlocked disc subjects, one per cell of a ceil(sqrt N)-square grid over a size^2 canvas."""
    per_subject = FIXED_FRACTION / subjects if area == "fixed" else GROWING_FRACTION
    radius = round(size * math.sqrt(per_subject / math.pi))
    cells = math.ceil(math.sqrt(subjects))
    cell = size / cells
    layers = []
    for i in range(subjects):
        cx, cy = (i % cells + 0.5) * cell, (i // cells + 0.5) * cell
        origin = (round(cx - radius), round(cy - radius))
        cutout = disc_cutout(radius)
        layers.append(
            CanvasLayer(f"s{i}", "subject", False, cutout, origin, Extent(size, size), f"disc{i}")
        )
    return layers


def conditioning_ids(variant: str, layers: list[CanvasLayer]) -> np.ndarray:
    """(L_cond, 3) int64 position ids of a variant's conditioning tokens."""
    grid = layers[0].token_mask.shape
    if variant == "layered":
        return plan_tokens(layers).conditioning_position_ids()
    if variant == "unpruned":  # layer k's whole grid with index k, as per-subject references
        full = np.ones(grid, bool)
        return np.concatenate([grid_position_ids(full, k + 1) for k in range(len(layers))])
    if variant == "collage":
        return grid_position_ids(np.ones(grid, bool), 1)
    raise ValueError(f"unknown variant {variant!r}")


# --- models -----------------------------------------------------------------------------------


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters directly in `dtype`: the full model in fp32 would need 48 GB first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(model: str, device: str, dtype: torch.dtype, **overrides):
    """A random-weight FLUX transformer, created on `device` in `dtype` (no download)."""
    from diffusers import FluxTransformer2DModel

    if model == "tiny":
        from layercomposer.tiny import tiny_kontext_components

        return tiny_kontext_components()["transformer"].to(device=device, dtype=dtype)
    config = {**MODEL_CONFIGS[model], **overrides}
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, out_channels=None, guidance_embeds=True, **config
        )
    return transformer.eval().requires_grad_(False)


def step_flops(config, length: int) -> float:
    """Matmul FLOPs of one step: linear layers 2 * 12 d^2 per token and block, attention 4 L^2 d.

    For FLUX.1 (57 blocks, d = 3072): 2 * 6.46e9 * L + 57 * 4 * L^2 * 3072. Embedders, norms
    and modulation are left out (they are per sample or tiny).
    """
    blocks = config.num_layers + config.num_single_layers
    width = config.num_attention_heads * config.attention_head_dim
    return 2 * blocks * 12 * width**2 * length + blocks * 4 * length**2 * width


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matmul on `device` in `dtype` (the floor's yardstick)."""
    n = 8192 if device.startswith("cuda") else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(6):
        started = _now(device)
        a @ b
        times.append(_now(device) - started)
    return 2 * n**3 / statistics.median(times[1:])


# --- timing and memory ------------------------------------------------------------------------


@dataclass
class StepResult:
    step_ms: float | None
    peak_mb: float | None
    estimated_s: float | None = None  # when skipped: the estimate that was over the limit


def _now(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def _resident_mb() -> tuple[float, float] | None:
    """(current, peak) resident memory of this process in MB, or None where /proc can't tell."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    read = {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}
    return read["VmRSS"], read["VmHWM"]


def _reset_peak_resident() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)
    except OSError:
        return False
    return True


def step_inputs(transformer, cond_ids: np.ndarray, grid: tuple[int, int], device: str):
    """The transformer's keyword arguments for one step on this sequence, random where values."""
    config, dtype = transformer.config, transformer.dtype
    noisy = grid_position_ids(np.ones(grid, bool), 0)
    img_ids = torch.from_numpy(np.concatenate([noisy, cond_ids])).to(device, dtype)
    generator = torch.Generator(device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    return dict(
        hidden_states=randn(1, len(img_ids), config.in_channels),  # (1, L_img + L_cond, 64)
        encoder_hidden_states=randn(1, TEXT_TOKENS, config.joint_attention_dim),
        pooled_projections=randn(1, config.pooled_projection_dim),
        timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
        guidance=torch.full((1,), 2.5, device=device, dtype=torch.float32),
        txt_ids=torch.zeros(TEXT_TOKENS, 3, device=device, dtype=dtype),
        img_ids=img_ids,
        return_dict=False,
    )


def timed_call(transformer, inputs: dict, device: str) -> float:
    """Seconds of one transformer call."""
    started = _now(device)
    transformer(**inputs)
    return _now(device) - started


def peak_call(transformer, inputs: dict, device: str) -> tuple[float, float | None]:
    """Seconds of one call and its peak memory in MB (see the module docstring)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        seconds = timed_call(transformer, inputs, device)
        return seconds, torch.cuda.max_memory_allocated() / 2**20
    if not _reset_peak_resident() or (before := _resident_mb()) is None:
        return timed_call(transformer, inputs, device), None
    seconds = timed_call(transformer, inputs, device)
    weights_mb = sum(p.numel() * p.element_size() for p in transformer.parameters()) / 2**20
    return seconds, weights_mb + _resident_mb()[1] - before[0]


# --- the sweep --------------------------------------------------------------------------------


def sequence_cases(resolutions, subjects, areas) -> list[tuple]:
    """((variant, N, area, resolution), conditioning ids, token grid, sequence length) per case."""
    cases = []
    for resolution in resolutions:
        for area in areas:
            for n in subjects:
                layers = subject_layers(n, area, resolution)
                grid = layers[0].token_mask.shape
                for variant in VARIANTS:
                    ids = conditioning_ids(variant, layers)
                    seq_len = TEXT_TOKENS + grid[0] * grid[1] + len(ids)
                    cases.append(((variant, n, area, resolution), ids, grid, seq_len))
    return cases


@torch.no_grad()
def measure(
    transformer, cases, device, warmup, reps, max_step_s=None, min_timed_s=MIN_TIMED_S
) -> dict[int, StepResult]:
    """Step time and peak memory per distinct sequence length (the cost depends only on it).

    First pass, shortest first: warm-up and a peak-memory call per length, whose time predicts
    the next one's (FLOPs over the rate seen so far) so that a case over `max_step_s` is skipped.
    Then timing rounds over all lengths in turn, so that load from other processes, which comes
    and goes, lands on every length alike: at least `reps` rounds, more for fast steps.
    """
    lengths = {seq_len: (ids, grid) for _, ids, grid, seq_len in cases}
    results: dict[int, StepResult] = {}
    inputs: dict[int, dict] = {}
    rate = None  # FLOP/s seen so far
    for seq_len in sorted(lengths):
        flops = step_flops(transformer.config, seq_len)
        if max_step_s and rate and flops / rate > max_step_s:
            results[seq_len] = StepResult(None, None, flops / rate)
            continue
        inputs[seq_len] = step_inputs(transformer, *lengths[seq_len], device)
        for _ in range(warmup):
            transformer(**inputs[seq_len])
        seconds, peak_mb = peak_call(transformer, inputs[seq_len], device)
        results[seq_len] = StepResult(None, peak_mb)
        rate = flops / seconds
    times: dict[int, list[float]] = {seq_len: [] for seq_len in inputs}
    started = time.perf_counter()
    rounds = 0
    while rounds < reps or (time.perf_counter() - started < min_timed_s and rounds < MAX_REPS):
        for seq_len, kwargs in inputs.items():
            times[seq_len].append(timed_call(transformer, kwargs, device))
        rounds += 1
    for seq_len, seconds in times.items():
        results[seq_len].step_ms = 1000 * statistics.median(seconds)
    return results


def sweep(
    transformer, resolutions, subjects, areas, device, warmup, reps, max_step_s=None,
    min_timed_s=MIN_TIMED_S,
):  # fmt: skip
    """One row per (resolution, area, N, variant): tokens, sequence, step time, peak memory."""
    cases = sequence_cases(resolutions, subjects, areas)
    measured = measure(transformer, cases, device, warmup, reps, max_step_s, min_timed_s)
    rows = []
    for (variant, n, area, resolution), ids, _, seq_len in cases:
        result = measured[seq_len]
        rows.append(
            dict(
                variant=variant, subjects=n, area=area, resolution=resolution,
                cond_tokens=len(ids), seq_len=seq_len,
                step_ms=None if result.step_ms is None else round(result.step_ms, 2),
                peak_mb=None if result.peak_mb is None else round(result.peak_mb, 1),
                estimated_s=result.estimated_s,
                flops=step_flops(transformer.config, seq_len),
            )
        )  # fmt: skip
    return rows


# --- reports ----------------------------------------------------------------------------------


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Rows as `write_csv` wrote them, with numbers for numbers (empty: None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("subjects", "resolution", "cond_tokens", "seq_len"):
            row[key] = int(row[key])
        for key in ("step_ms", "peak_mb"):
            row[key] = float(row[key]) if row[key] else None
    return rows


def _ratio(value, base) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


def markdown_tables(rows: list[dict], rate: float) -> str:
    """One table per (resolution, area): every variant's figures, its ratios to `layered`, and
    its compute floor (matmul FLOPs over the measured matmul `rate`)."""
    out = []
    for resolution in dict.fromkeys(r["resolution"] for r in rows):
        for area in dict.fromkeys(r["area"] for r in rows):
            table = [r for r in rows if r["resolution"] == resolution and r["area"] == area]
            if not table:
                continue
            head = "| N | variant | cond tokens | seq len | step ms | peak MB | cond x | seq x | step x | mem x | floor ms | x floor |"
            rule = "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            out += [f"\n**{resolution}x{resolution}, {area} visible area**\n", head, rule]
            for row in table:
                base = next(
                    r
                    for r in table
                    if r["subjects"] == row["subjects"] and r["variant"] == "layered"
                )
                step = "-" if row["step_ms"] is None else f"{row['step_ms']:.1f}"
                if row["estimated_s"]:
                    step = f"(~{row['estimated_s']:.0f} s, skipped)"
                peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
                line = (
                    f"| {row['subjects']} | {row['variant']} | {row['cond_tokens']:,} | {row['seq_len']:,} "
                    f"| {step} | {peak} | {_ratio(row['cond_tokens'], base['cond_tokens'])} "
                    f"| {_ratio(row['seq_len'], base['seq_len'])} | {_ratio(row['step_ms'], base['step_ms'])} "
                    f"| {_ratio(row['peak_mb'], base['peak_mb'])} "
                )
                floor_ms = 1000 * row["flops"] / rate
                out.append(line + f"| {floor_ms:.1f} | {_ratio(row['step_ms'], floor_ms)} |")
    return "\n".join(out)


def growth_summary(rows: list[dict], n: int = 8) -> str:
    """N subjects vs 1 at a fixed visible area, per variant: how tokens and step time grew."""
    lines = []
    for resolution in dict.fromkeys(r["resolution"] for r in rows):
        for variant in VARIANTS:
            pick = {
                r["subjects"]: r
                for r in rows
                if r["resolution"] == resolution
                and r["area"] == "fixed"
                and r["variant"] == variant
            }
            if 1 in pick and n in pick:
                one, many = pick[1], pick[n]
                lines.append(
                    f"{resolution}^2 fixed area, N={n} vs N=1, {variant:<8}: conditioning tokens "
                    f"x{_ratio(many['cond_tokens'], one['cond_tokens'])}, step time "
                    f"x{_ratio(many['step_ms'], one['step_ms'])}"
                )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Conditioning tokens, step time and peak memory against N: one row of panels per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    resolutions = list(dict.fromkeys(r["resolution"] for r in rows))
    metrics = (("cond_tokens", "conditioning tokens"), ("step_ms", "ms per step"), ("peak_mb", "peak MB"))  # fmt: skip
    fig, axes = plt.subplots(
        len(resolutions), 3, figsize=(13, 3.6 * len(resolutions)), squeeze=False
    )
    colours = {"layered": "tab:blue", "unpruned": "tab:red", "collage": "tab:gray"}
    for row_axes, resolution in zip(axes, resolutions, strict=True):
        for ax, (key, label) in zip(row_axes, metrics, strict=True):
            for variant in VARIANTS:
                # Only the layered sequence depends on the visible area.
                styles = (("fixed", "-o"), ("growing", "--s")) if variant == "layered" else (("fixed", "-o"),)  # fmt: skip
                for area, style in styles:
                    points = [
                        (r["subjects"], r[key])
                        for r in rows
                        if (r["resolution"], r["variant"], r["area"]) == (resolution, variant, area)
                        and r[key] is not None
                    ]
                    if points:
                        xs, ys = zip(*points, strict=True)
                        name = f"{variant}, {area} area" if variant == "layered" else variant
                        ax.plot(xs, ys, style, color=colours[variant], label=name)
            ax.set(xscale="log", yscale="log", xlabel="subjects", ylabel=label)
            ax.set_title(f"{resolution}x{resolution}: {label}", fontsize=10)
            subjects = sorted({r["subjects"] for r in rows})
            ax.set_xticks(subjects, labels=[str(n) for n in subjects])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_locator(
                LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0))
            )  # labels in short ranges
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line -----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("tiny", "mid", "full"), default="mid")
    parser.add_argument("--full-size", action="store_true", help="--model full on cuda, bf16")
    parser.add_argument("--quick", action="store_true", help="512^2 and N = 1, 2, 4, 8 only")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--areas", nargs="+", choices=AREAS, default=list(AREAS))
    parser.add_argument("--device", default=None, help="default: cuda for --full-size, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, else float32")
    parser.add_argument("--attention-backend", default=None, help="diffusers backend, e.g. flash")
    parser.add_argument("--compile", action="store_true", help="time lc render --compile's steps")
    parser.add_argument("--quantize", choices=("none", "int8", "fp8"), default="none")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (0: torch's default); one is steadier on a shared CPU")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-step-s", type=float, default=None, help="default: 20 on a CPU")
    parser.add_argument("--min-timed-s", type=float, default=MIN_TIMED_S,
                        help="keep timing rounds going at least this long")  # fmt: skip
    parser.add_argument("--prepare", action=argparse.BooleanOptionalAction, default=True,
                        help="also time prepare (text + layer encodes) cold and after a move")  # fmt: skip
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--from-csv", type=Path, help="only draw --plot from an earlier --csv")
    parser.add_argument("--title", help="of the plot")
    args = parser.parse_args(argv)
    if args.full_size:
        args.model = "full"
    if args.quick:
        args.resolutions, args.subjects = [512], [n for n in args.subjects if n <= 8]
    args.device = args.device or ("cuda" if args.model == "full" else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU here (--full-size needs one: 24 GB)")
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))  # fmt: skip
    if args.max_step_s is None and not args.device.startswith("cuda"):
        args.max_step_s = 20.0
    return args


def main(argv=None, **model_overrides) -> list[dict]:
    """Run the sweep (and the prepare benchmark); print the tables; write --csv/--plot/--markdown."""
    args = parse_args(argv)
    if args.from_csv:
        plot(read_csv(args.from_csv), args.plot, args.title or f"lc scaling: {args.model} model")
        return read_csv(args.from_csv)
    if args.threads and not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    transformer = build_transformer(args.model, args.device, args.dtype, **model_overrides)
    if args.attention_backend:
        transformer.set_attention_backend(args.attention_backend)
    if args.compile or args.quantize != "none":  # as lc render applies them
        from layercomposer.speed import SpeedOptions, apply_speed_options, quantize_transformer

        quantize_transformer(transformer, args.quantize)
        apply_speed_options(transformer, SpeedOptions(compile=args.compile))
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    header = (
        f"model {args.model} ({sum(p.numel() for p in transformer.parameters()) / 1e6:,.1f} M "
        f"parameters, {str(args.dtype).removeprefix('torch.')}, compile {args.compile}, "
        f"quantize {args.quantize}) on {device_name}, "
        f"{torch.get_num_threads()} of {os.cpu_count()} CPU threads, torch {torch.__version__}; built in "
        f"{time.perf_counter() - started:.1f} s; step = median of {args.reps} after {args.warmup} warm-up"
    )
    print(header, flush=True)
    rate = matmul_rate(args.device, args.dtype)
    print(
        f"measured {str(args.dtype).removeprefix('torch.')} matmul rate: {rate / 1e12:.2f} TFLOP/s"
    )
    rows = sweep(
        transformer, args.resolutions, args.subjects, args.areas, args.device, args.warmup,
        args.reps, args.max_step_s, args.min_timed_s,
    )  # fmt: skip
    del transformer
    report = [header, markdown_tables(rows, rate), ""]
    report.append(growth_summary(rows))
    if args.prepare:
        from prepare import move_table

        report += ["", move_table(args.model, args.device, args.dtype, max(args.resolutions))]
    text = "\n".join(report)
    print(text[len(header) :])
    if args.csv:
        write_csv(rows, args.csv)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.plot:
        plot(rows, args.plot, args.title or f"lc scaling: {args.model} model on {device_name}")
    return rows


if __name__ == "__main__":
    # A fixed mmap threshold makes freed tensors go back to the OS at once, so the resident-memory
    # peak of each CPU step starts from what is really live (glibc would otherwise keep them).
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and sys.platform.startswith("linux"):
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
