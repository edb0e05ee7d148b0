"""The CPU top-k and pairs kernels score tiles with oneDNN where torch has it, else with at::mm.

The choice is made once per process, so the at::mm path is covered by running the CPU kernel tests
again in a child process with SENTFUSE_CPU_GEMM=mm.
"""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_at_mm_path_passes_the_cpu_kernel_tests():
    env = dict(os.environ, SENTFUSE_CPU_GEMM="mm")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(TESTS / "test_topk.py"),
         str(TESTS / "test_pairs.py")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
