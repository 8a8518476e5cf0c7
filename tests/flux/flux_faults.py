"""Faults for the ``failing_flux`` server's pipeline call: torch's own allocation failures.

The CUDA one is raised by hand (these tests have no GPU); the CPU one is really provoked.
"""

from __future__ import annotations


def cuda_out_of_memory() -> None:
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB")


def cpu_out_of_memory() -> None:
    import torch

    # An exabyte: more than any address space, so the allocator refuses at once on every machine.
    torch.empty(1 << 60, dtype=torch.uint8)
