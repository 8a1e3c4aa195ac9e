"""Time one HDKD training step (forward + backward + optimizer step) of the published networks.

Compares, in one run with the variants alternating: our DistillationTrainer step (one teacher pass +
one student pass; plain NCHW and channels_last; the teacher under bf16 autocast where the CPU computes
bf16 natively, as the pipeline's ``runtime.teacher_precision: auto`` does), the published code's step
that re-runs stage prefixes (tests/naive_distill.py), and our CE-only student step (no teacher). Batch 16,
224 px, 3 channels, 4 classes, 2 threads; the median over ``--rounds`` rounds after one untimed warm-up
round. Prints the CPU report, this machine's float32 and bf16 matmul peak measured in the same run, each
step's useful GFLOP/s (teacher forward + 3x student forward per image: forward and backward) as a
fraction of those peaks, and how far a bfloat16-autocast teacher moves the loss terms from float32.

The LAST line is ``ratio=<ours/naive>`` (ours = channels_last unless ``--no-channels-last``).
Run from the repository root: ``python benchmarks/distill_step.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared naive reference

from inference import peaks  # the matmul peak, from benchmarks/inference.py next to this script
from naive_distill import naive_loss

from pipeline.device import cpu_report, use_bf16
from pipeline.distill import DistillationTrainer, HDKDLoss
from pipeline.networks import build_network
from pipeline.networks.flops import forward_flops

CLASSES = 4


def batch_of(size: int, image_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(size, 3, image_size, image_size, generator=generator),
        "label": torch.randint(0, CLASSES, (size,), generator=generator),
    }


def optimizer_for(network: torch.nn.Module) -> torch.optim.Optimizer:
    """The published student optimizer."""
    return torch.optim.AdamW(network.parameters(), lr=5e-5, weight_decay=0.05)


def trainer_step(student: torch.nn.Module, teacher: torch.nn.Module | None, **options: bool) -> Callable:
    """One DistillationTrainer iteration on a given batch."""
    engine = DistillationTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[],
        network=student,
        optimizer=optimizer_for(student),
        loss_function=HDKDLoss(),
        teacher=teacher,
        decollate=False,
        **options,
    )
    return lambda batch: engine._iteration(engine, batch)


def naive_step(student: torch.nn.Module, teacher: torch.nn.Module) -> Callable:
    """One step of the published formulation (prefix re-runs per distilled stage)."""
    optimizer, loss = optimizer_for(student), HDKDLoss()

    def step(batch: dict[str, torch.Tensor]) -> None:
        student.train()
        optimizer.zero_grad()
        naive_loss(student, teacher, loss, batch["image"], batch["label"])["loss"].backward()
        optimizer.step()

    return step


def bf16_effect(student: torch.nn.Module, teacher: torch.nn.Module, batch: dict[str, torch.Tensor]) -> str:
    """Relative change of the teacher's stage maps and of the loss terms when the teacher runs under
    bfloat16 autocast instead of float32 (same student output)."""
    loss = HDKDLoss()
    with torch.no_grad():
        student_out = student(batch["image"], return_features=True)
        fp32_teacher = teacher(batch["image"], return_features=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_teacher = teacher(batch["image"], return_features=True)
        fp32, bf16 = (
            loss(student_out, fp32_teacher, batch["label"]),
            loss(student_out, bf16_teacher, batch["label"]),
        )
    maps = [
        ((low.float() - full).norm() / full.norm()).item()
        for low, full in zip(bf16_teacher.features, fp32_teacher.features, strict=True)
    ]
    terms = [f"{t} {fp32[t].item():.5g}->{bf16[t].item():.5g}" for t in ("loss", "logit_kd", "feature_kd")]
    return f"teacher maps rel. L2 error {', '.join(f'{e:.1e}' for e in maps)}; " + ", ".join(terms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (each runs every variant once)")
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--no-channels-last", action="store_true", help="report plain NCHW as ours")
    parser.add_argument("--teacher-bf16", action="store_true", help="also time ours with a bf16 teacher")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {"image_size": args.image_size, "num_classes": CLASSES, "in_channels": 3}
    teacher = build_network("teacher", "published", **overrides).eval()
    hdkd = build_network("hdkd", "published", **overrides)
    auto_bf16 = use_bf16("auto", "cpu")  # the pipeline's default runtime.teacher_precision
    variants: dict[str, Callable] = {
        "ours": trainer_step(copy.deepcopy(hdkd), teacher, teacher_bf16=auto_bf16),
        "ours_channels_last": trainer_step(
            copy.deepcopy(hdkd), copy.deepcopy(teacher), channels_last=True, teacher_bf16=auto_bf16
        ),
        "naive": naive_step(copy.deepcopy(hdkd), teacher),
        "ce_only": trainer_step(
            build_network("baseline", "published", **overrides), None, channels_last=not args.no_channels_last
        ),
    }
    if args.teacher_bf16:
        variants["ours_bf16_teacher"] = trainer_step(
            copy.deepcopy(hdkd),
            copy.deepcopy(teacher),
            channels_last=not args.no_channels_last,
            teacher_bf16=True,
        )
    print(cpu_report().summary())
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.image_size} px, "
        f"teacher under bf16 autocast in ours: {'yes' if auto_bf16 else 'no'} (teacher_precision auto)",
        flush=True,
    )
    peak = peaks(2.0)
    batch = batch_of(args.batch, args.image_size)
    for step in variants.values():  # untimed warm-up at full size (allocator, oneDNN primitives)
        step(batch)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - start)
        print(
            f"round {round_index + 1}: " + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()),
            flush=True,
        )
    median = {name: statistics.median(values) for name, values in times.items()}
    after = peaks(2.0)
    peak = {dtype: max(value, after[dtype]) for dtype, value in peak.items()}
    print(f"matmul peak: float32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
    student_gflop, teacher_gflop = (forward_flops(n, args.image_size, 3) / 1e9 for n in (hdkd, teacher))
    for name, value in median.items():
        useful = args.batch * (3 * student_gflop + (0 if name == "ce_only" else teacher_gflop))
        achieved = useful / value
        print(
            f"{name}: median {value:.2f} s/step over {len(times[name])} steps, useful {achieved:.1f} "
            f"GFLOP/s = {100 * achieved / peak['fp32']:.0f}% of the fp32 peak, "
            f"{100 * achieved / peak['bf16']:.0f}% of bf16"
        )
    print(
        "bf16 teacher vs fp32 teacher (batch 4):", bf16_effect(hdkd, teacher, batch_of(4, args.image_size, 2))
    )
    ours = median["ours"] if args.no_channels_last else median["ours_channels_last"]
    print(f"ours plain / naive: {median['ours'] / median['naive']:.3f}")
    print(f"ours channels_last / naive: {median['ours_channels_last'] / median['naive']:.3f}")
    if args.teacher_bf16:
        print(f"ours bf16 teacher / naive: {median['ours_bf16_teacher'] / median['naive']:.3f}")
    print(f"ours distill step / ours CE-only step: {ours / median['ce_only']:.2f}x (published code: 7.0x)")
    print(f"ratio={ours / median['naive']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
