"""train.cpu_malloc_reuse: freed blocks stay in the process instead of going back to the kernel."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).parent / "scripts" / "heap_probe.py"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_malloc_reuse_keeps_freed_blocks_in_the_heap(tmp_path):
    def probe(flag):
        env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
        out = subprocess.run([sys.executable, str(PROBE), flag, str(tmp_path)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    # glibc's default: a 24 MiB block is its own mmap (or trimmed on free): back to the kernel each time.
    assert probe("false") == "returned"
    assert probe("true") == "kept"
