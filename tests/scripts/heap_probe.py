"""Print whether a 24 MiB malloc'd block comes from the heap and stays there after free.

    python heap_probe.py on|off      # on: ppo_dist's train.cpu_malloc_reuse applied first
"""

import ctypes
import sys

import torch  # noqa: F401  (the allocator state a training process has)

from ppo_dist.distributed import reuse_freed_cpu_memory

if sys.argv[1] == "on" and not reuse_freed_cpu_memory():
    sys.exit("mallopt was not applied")
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
