"""Run a script as ``__main__`` in CPU processes started by ``accelerate launch`` (tests only).

Usage: accelerate launch tests/scripts/run_on_cpu.py SCRIPT [ARGS...]

accelerate's ``PartialState()``, which legacy example scripts call before anything else, ignores
``ACCELERATE_USE_CPU``: in CPU processes it comes up as a single, non-distributed process. This
wrapper sets the shared state up for CPU processes over gloo first (on GPUs no wrapper is needed),
runs the script unchanged, and then tears the process group down, which legacy scripts never do
(gloo may abort at interpreter exit otherwise), and leaves without the interpreter's teardown.
"""

import os
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
    # The script finished and everything is written: leave without the interpreter's teardown, in which
    # a library's CPU communication thread occasionally aborts ("terminate called without an active
    # exception", exit -6) and turns a finished run into a failed one (train.py does the same).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
