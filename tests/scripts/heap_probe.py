"""Print whether a 24 MiB malloc'd block comes from the heap and stays there after free, in a
process set up as training sets itself up (ppo_dist's accelerator built from the config).

    python heap_probe.py true|false      # --train.cpu_malloc_reuse
"""

import ctypes
import sys

from ppo_dist.config import parse_args, validate
from ppo_dist.runtime import distributed

cfg = parse_args(["--train.cpu_malloc_reuse", sys.argv[1], "--log.trackers", "[]", "--train.output_dir", sys.argv[2]])
distributed.build_accelerator(cfg, validate(cfg, 1))

libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 24 << 20
brk0 = libc.sbrk(0)
block = libc.malloc(size)
brk1 = libc.sbrk(0)
libc.free(block)
brk2 = libc.sbrk(0)
from_heap = brk1 - brk0 >= size // 2  # the program break moved: not a separate mmap
print("kept" if from_heap and brk2 == brk1 else "returned")
