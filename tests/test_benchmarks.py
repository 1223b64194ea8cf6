"""The benchmarks stay runnable: the GPU check's smoke mode and the side-by-side step comparison.

They print speed numbers that no test asserts; these tests check that every section produces its rows, so
the GPU check is ready for a machine where it runs once, unattended.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_prints_every_section():
    # A generous budget: on a busy CI machine no section may be skipped, or the test would not show it runs.
    table = run("benchmarks/gpu_check.py", "--quick", "--device", "cpu", "--budget-s", "600")
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert table.startswith("| section | what | value |")
    assert {row[0].strip("| ") for row in rows} == {"machine", "steps", "goals", "drift", "packing"}
    steps = {row[1]: row[2] for row in rows if row[0] == "| steps"}
    assert set(steps) == {"random_tiny8 96² fp32", "random_tiny8 96² bf16"}
    assert all("regular" in value and "steps/s" in value for value in steps.values())
    drift = next(row[2] for row in rows if row[0] == "| drift")
    assert all(name in drift for name in ("structure_score", "appearance_score", "splice_score"))
    packing = [row for row in rows if row[0] == "| packing"]
    assert [row[1] for row in packing] == [
        "1 trial(s) at once (--gpus-per-trial 1)",
        "2 trial(s) at once (--gpus-per-trial 0.5)",
        "best packing",
    ]
    assert "skipped" not in table and "failed" not in table


def test_gpu_check_refuses_unknown_mode():
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--modes", "fp8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--modes: unknown fp8" in done.stderr


@pytest.mark.slow
def test_compare_step_times_two_settings_side_by_side():
    out = run(
        "benchmarks/compare_step.py",
        "--vit",
        "random_tiny8",
        "--short-side",
        "64",
        "--a-set",
        "amp=false",
        "--b-set",
        "amp=true",
        "--rounds",
        "1",
        "--steps",
        "1",
        "--warmup",
        "1",
    )
    assert "A: " in out and "working tree amp=false" in out and "working tree amp=true" in out
    assert "B vs A: " in out
