"""train.cpu_malloc_reuse: freed blocks stay in the process instead of going back to the kernel."""

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).parent / "scripts" / "heap_probe.py"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_malloc_reuse_keeps_freed_blocks_in_the_heap():
    def probe(mode):
        out = subprocess.run([sys.executable, str(PROBE), mode], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    # glibc's default: a 24 MiB block is its own mmap (or trimmed on free): back to the kernel each time.
    assert probe("off") == "returned"
    assert probe("on") == "kept"
