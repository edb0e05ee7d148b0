"""The CPU the benchmarks ran on, as their tables print it: one reader of /proc/cpuinfo for every script."""

from __future__ import annotations

import platform


def model_and_flags() -> tuple[str, set[str]]:
    """The first processor's model name and feature flags from /proc/cpuinfo (platform's processor name and no
    flags where there is none)."""
    model, flags = platform.processor() or "cpu", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags
