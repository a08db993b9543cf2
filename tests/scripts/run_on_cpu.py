"""Run a script as ``__main__`` in CPU processes started by ``accelerate launch`` (tests only).

Usage: accelerate launch tests/scripts/run_on_cpu.py SCRIPT [ARGS...]

accelerate's ``PartialState()``, which legacy example scripts call before anything else, ignores
``ACCELERATE_USE_CPU``: in CPU processes it comes up as a single, non-distributed process. This
wrapper sets the shared state up for CPU processes over gloo first (on GPUs no wrapper is needed),
runs the script unchanged, and then tears the process group down, which legacy scripts never do
(gloo may abort at interpreter exit otherwise).
"""

import runpy
import sys

import torch
from accelerate import PartialState

if __name__ == "__main__":
    PartialState(cpu=True)  # several processes: MULTI_CPU over gloo
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
