"""What machine and software a benchmark run measured (printed with every table)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["LIBRARIES", "SOURCE_DIRS", "describe", "load_average", "source_digest"]

#: the libraries whose versions change the numbers
LIBRARIES = ("websockets", "aiohttp", "picows", "wsproto", "anyio", "orjson", "msgspec", "h11")
#: wirestate's own code: a digest of these tells whether the measured code changed mid-run
SOURCE_DIRS = ("engine", "machines", "transports")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision(root: Path) -> str:
    """Commit of the measured tree, with ``+dirty`` when it has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "no commit") + ("+dirty" if dirty else "")


def source_digest(root: Path) -> str:
    """Short SHA-256 over wirestate's ``*.py`` files (paths and contents)."""
    digest = hashlib.sha256()
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                pass
    return digest.hexdigest()[:12]


def load_average() -> tuple[float, float, float]:
    """1/5/15-minute load averages (noise from other tenants shows here)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def describe(root: Path) -> dict[str, Any]:
    """CPU model, cores, memory, kernel, Python and library versions."""
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "libraries": versions,
        "wirestate": _git_revision(root),
        "wirestate_sources_start": source_digest(root),
        "load_average_start": load_average(),
        # (python-websockets' per-connect proxy lookup scans the environment)
        "environment_variables": len(os.environ),
    }
