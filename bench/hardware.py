"""The hardware a bench ran on, in one line: GPU model and driver, CPU model, cores, torch.

Figures differ a lot between machines (the same switch bench gave 1.3 ms on one x86 CPU and 7.5
ms on a quiet AMD EPYC virtual machine), so every bench table names its machine with this line.

    from hardware import hardware_line   # bench scripts run with bench/ on sys.path
    print(hardware_line("cuda"))
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cores() -> tuple[int, int]:
    """(cores this process may use, cores the machine has)."""
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = total
    return usable, total


def gpu_driver() -> str | None:
    """The NVIDIA driver version, from nvidia-smi (torch does not report it), or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def hardware(device: str = "cpu") -> dict:
    """What ran the bench, as a dict (for the JSON files); ``device`` as given to the bench."""
    import torch

    usable, total = cpu_cores()
    info = {
        "device": str(device),
        "gpu": None,
        "gpu_driver": None,
        "cuda": torch.version.cuda,
        "cpu": cpu_model(),
        "cores": usable,
        "cores_total": total,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30)
        info["gpu_driver"] = gpu_driver()
    return info


def format_line(info: dict) -> str:
    """The one-line form of `hardware`'s dict."""
    if info.get("gpu"):
        gpu = f"GPU {info['gpu']} ({info.get('gpu_memory_gib', '?')} GiB), driver "
        gpu += f"{info.get('gpu_driver') or 'unknown'}, CUDA {info.get('cuda') or '?'}; "
    else:
        gpu = "no GPU used; "
    cores = f"{info['cores']} cores"
    if info.get("cores_total") and info["cores_total"] != info["cores"]:
        cores += f" (of {info['cores_total']})"
    return f"hardware: {gpu}CPU {info['cpu']}, {cores}; torch {info['torch']}"


def hardware_line(device: str = "cpu") -> str:
    """One line naming the machine: GPU model and driver, CPU model, core count, torch version."""
    return format_line(hardware(device))


if __name__ == "__main__":
    import sys

    print(hardware_line(sys.argv[1] if len(sys.argv) > 1 else "cpu"))
