"""Fails if an nvcc-compiled object holds what must only be compiled by the C++ compiler.

The crash class behind the first GPU run's l2_normalize segfault: argument checks, op registrations and
their dispatcher wrappers compiled by both g++ and nvcc (inline functions and template instantiations with
one weak copy per translation unit, the linker keeping any one of them), and errors thrown from
nvcc-compiled frames. csrc/ keeps every check and host entry point in .cpp files; this script checks the
built objects so that the rule cannot erode:
  - no .cu object defines a sentfuse argument check, a TORCH_LIBRARY_IMPL block or a dispatcher wrapper;
  - the launchers named in NO_THROW (raw parameters in, cudaError_t out) never throw at all.

Usage: python check_cu_objects.py BUILD_DIR
"""

import pathlib
import subprocess
import sys

FORBIDDEN_DEFINED = ("sentfuse::check_", "TORCH_LIBRARY_IMPL_init", "c10::impl::wrap_kernel_functor_unboxed_",
                     "c10::impl::make_boxed_from_unboxed_functor")
FORBIDDEN_UNDEFINED = ("sentfuse::check_", "sentfuse::fail_non_finite")
NO_THROW = ("pooling.cu.o", "pair_scores.cu.o")
THROWS = ("__cxa_throw", "torchCheckFail", "torchInternalAssertFail")


def symbols(obj: pathlib.Path, *flags: str) -> list[str]:
    out = subprocess.run(["nm", "-C", *flags, str(obj)], check=True, capture_output=True, text=True).stdout
    return [line.split(" ", 2)[-1] for line in out.splitlines() if line.strip()]


def main() -> int:
    objects = sorted(pathlib.Path(sys.argv[1]).rglob("*.cu.o"))
    if not objects:
        print("check_cu_objects: no .cu objects found", file=sys.stderr)
        return 1
    problems = []
    for obj in objects:
        defined, undefined = symbols(obj, "--defined-only"), symbols(obj, "--undefined-only")
        problems += [f"{obj.name} defines {s}" for s in defined if any(f in s for f in FORBIDDEN_DEFINED)]
        problems += [f"{obj.name} calls {s}" for s in undefined if any(f in s for f in FORBIDDEN_UNDEFINED)]
        if obj.name in NO_THROW:
            problems += [f"{obj.name} may throw via {s}" for s in undefined if any(t in s for t in THROWS)]
    for p in problems:
        print("check_cu_objects:", p, file=sys.stderr)
    print(f"check_cu_objects: {len(objects)} .cu objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
