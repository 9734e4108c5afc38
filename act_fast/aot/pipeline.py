"""Record → compile → check, and the report, for the workloads of :mod:`.workloads` or any
recorded spec list."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from act_fast.aot.checks import CHECKS
from act_fast.aot.compile import DEFAULT_ARCHS, CompileResult, compile_in_subprocess, load_results
from act_fast.aot.record import KernelSpec, LaunchRecorder, save_specs, torch_device_for_recording
from act_fast.aot.workloads import Workload


def record_workloads(workloads: Iterable[Workload], device: torch.device | None = None) -> list[KernelSpec]:
    """Runs each workload with launches skipped and returns the deduplicated specializations.

    Needs the ops to dispatch to Triton: a CUDA device, or ``TRITON_INTERPRET=1`` on the CPU.

    Raises:
        RuntimeError: a workload launched no Triton kernel.
    """
    from act_fast.ops import set_backend

    device = device or torch_device_for_recording()
    previous = set_backend("triton")
    try:
        with LaunchRecorder(execute=False) as rec:
            for w in workloads:
                x, call = w.build(device)
                before = rec.launches
                with rec.workload(w.name, x if w.hot else None):
                    call()
                if rec.launches == before:
                    raise RuntimeError(
                        f"workload {w.name!r} launched no Triton kernel on {device}: without a GPU the ops need "
                        "TRITON_INTERPRET=1 (set before act_fast is imported) to dispatch to Triton"
                    )
    finally:
        set_backend(previous)
    return rec.specs


@dataclass
class Finding:
    """One failed check of one spec on one arch."""

    check: str
    spec: KernelSpec
    arch: int
    message: str


def compile_specs(
    specs: list[KernelSpec], archs=DEFAULT_ARCHS, jobs: int | None = None, workdir: Path | None = None, timeout: float | None = None
) -> dict[tuple[str, int], CompileResult]:
    """Compiles in a separate process (see :func:`compile_in_subprocess`), keeping the JSON files
    in ``workdir`` when given; results keyed by ``(spec_id, arch)``."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(workdir or tmp)
        d.mkdir(parents=True, exist_ok=True)
        save_specs(specs, d / "specs.json")
        compile_in_subprocess(d / "specs.json", d / "results.json", archs, jobs, timeout)
        results = load_results(d / "results.json")
    return {(r.spec_id, r.arch): r for r in results}


def check_all(specs: list[KernelSpec], results: dict[tuple[str, int], CompileResult], archs=DEFAULT_ARCHS) -> list[Finding]:
    """Every check on every (spec, arch); ``vectorized`` only for specs with streamed arguments."""
    findings = []
    for spec in specs:
        for arch in archs:
            result = results[(spec.spec_id, arch)]
            for name, check in CHECKS.items():
                if name == "vectorized" and not spec.streamed:
                    continue
                message = check(spec, result)
                if message is not None:
                    findings.append(Finding(name, spec, arch, message))
    return findings


def report(specs: list[KernelSpec], results: dict[tuple[str, int], CompileResult], findings: list[Finding], archs=DEFAULT_ARCHS) -> str:
    """Markdown: one row per (spec, arch) with registers, spills, float64 ops and the widths of the
    streamed accesses, then the failed checks."""
    lines = [
        f"# AOT compile of {len(specs)} Triton specializations for " + ", ".join(f"sm_{a}" for a in archs),
        "",
        "| spec | first label | sm | regs | spill st/ld B | f64 ops | streamed accesses | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in sorted(specs, key=lambda s: (s.name, s.labels[0])):
        for arch in archs:
            r = results[(spec.spec_id, arch)]
            if not r.ok:
                lines.append(f"| {spec.spec_id} | {spec.labels[0]} | {arch} | — | — | — | compile error | {r.seconds:.1f} |")
                continue
            streamed = "; ".join(f"{p}: {r.access(p).describe()}" for p in sorted(spec.streamed)) or "—"
            lines.append(
                f"| {spec.spec_id} | {spec.labels[0]} | {arch} | {r.registers} | {r.spill_store_bytes}/{r.spill_load_bytes} "
                f"| {sum(r.f64_ops.values())} | {streamed} | {r.seconds:.1f} |"
            )
    lines += ["", f"## {len(findings)} failed checks", ""]
    lines += [f"- **{f.check}** sm_{f.arch}: {f.message}" for f in findings]
    lines += ["", "## Specializations", ""]
    lines += [f"- `{s.spec_id}`: {s.describe()} — {len(s.labels)} label(s): {', '.join(s.labels[:4])}" for s in specs]
    return "\n".join(lines) + "\n"
