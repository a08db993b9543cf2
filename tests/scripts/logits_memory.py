"""Peak resident memory (MB above the set-up) of logprobs + entropy over vocab 50k x length 512.

Usage: python tests/scripts/logits_memory.py chunked|unchunked. Prints one number. Linux only: the
high-water mark is reset through /proc/self/clear_refs after the set-up. Run it with a fixed glibc
mmap threshold (MALLOC_MMAP_THRESHOLD_=65536) so that freed blocks leave the resident set and the
peak follows the memory that is really alive.
"""

import resource
import sys

import torch

from ppo_dist import algos

VOCAB, LENGTH, HIDDEN, CHUNK = 50_257, 512, 64, 32


def current_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden = torch.randn(1, LENGTH, HIDDEN, requires_grad=True)
    labels = torch.randint(0, VOCAB, (1, LENGTH))
    # Warm-up on two chunks: the first checkpointed backward loads ~75 MB of code and state once.
    warm = slice(0, 2 * CHUNK)
    algos.chunked_logprobs(hidden[:, warm], head, labels[:, warm], chunk_tokens=CHUNK, entropy="metric")[
        0
    ].sum().backward()
    (head(hidden[:, warm]).sum()).backward()
    head.weight.grad = hidden.grad = None
    base = current_mb()
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
        f.write("5")
    if sys.argv[1] == "chunked":
        logprobs, _ = algos.chunked_logprobs(hidden, head, labels, chunk_tokens=CHUNK, entropy="metric")
    else:
        logits = head(hidden)
        logprobs = algos.logprobs_from_logits(logits, labels)
        with torch.no_grad():  # the entropy of every position, as a full-logits implementation computes it
            -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    logprobs.sum().backward()
    print(peak_mb() - base)


if __name__ == "__main__":
    main()
