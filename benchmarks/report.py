"""Writing benchmark results into `benchmarks/RESULTS.md`, one section per benchmark."""

from __future__ import annotations

import os
import pathlib
import platform
import re

import jax
import jaxlib

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEach section is rewritten by the command it names.\n"


def machine_line() -> str:
    """Machine, device and library versions, for the record beside each result.

    Example:
        >>> print(machine_line())  # doctest: +SKIP
        Linux x86_64, 2 CPU cores, cpu:TFRT_CPU_0; Python 3.11.7, jax 0.10.2, jaxlib 0.10.2
    """
    device = jax.devices()[0]
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{device.platform}:{device.device_kind}; Python {platform.python_version()}, "
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"
    )


def section_title(title: str) -> str:
    """`title` tagged with the device it ran on, so results from different machines coexist.

    Example:
        >>> section_title("Train step")  # doctest: +SKIP
        'Train step (cpu, 2 cores)'
    """
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"{title} (cpu, {os.cpu_count()} cores)"
    return f"{title} ({device.platform}, {device.device_kind})"


def write_section(name: str, body: str) -> None:
    """Replaces (or appends) the section `## name` of RESULTS.md with `body`.

    Example:
        >>> write_section("overhead (cpu)", "| a | b |")  # doctest: +SKIP
    """
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)
