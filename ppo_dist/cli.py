"""The ``ppo_dist`` command: ``ppo_dist <subcommand> ...``.

Subcommands register in ``SUBCOMMANDS`` as ``name -> (help, add_arguments, run)``; ``run`` gets
the parsed namespace and returns an exit code. Heavy imports (matplotlib, tensorboard, torch)
happen inside ``run`` so one subcommand does not pay for another's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


class CommandError(Exception):
    """An expected failure (bad input); printed as one line, no traceback, exit code 1."""


# ------------------------------------------------------------------------------------------
# plot
# ------------------------------------------------------------------------------------------


def _plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dir", metavar="RUN_DIR", type=Path, help="run directory; TensorBoard event files are searched recursively"
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    p.add_argument("--title", default=None, help="figure title (default: '<PPO|SFT|RM|DPO> 训练曲线 — <run dir name>')")
    p.add_argument(
        "--tags",
        default=None,
        help="comma-separated tags or globs to plot, e.g. 'env/reward_mean,ppo/loss/*' "
        "(default: the standard panels of what the run logged: PPO reward / KL / loss / entropy; sft, rm, dpo loss / "
        "accuracy / reward margin)",
    )


def _plot_run(args: argparse.Namespace) -> int:
    from ppo_dist.plot import plot_run

    tags = None
    if args.tags is not None:
        tags = [t.strip() for t in args.tags.split(",") if t.strip()]
        if not tags:
            raise CommandError(f"--tags {args.tags!r} names no tag")
    out = args.output if args.output is not None else args.run_dir / "curves.png"
    try:
        written = plot_run(args.run_dir, out, title=args.title, tags=tags)
    except (OSError, ValueError) as e:
        raise CommandError(str(e)) from e
    print(written)
    return 0


SubcommandRun = Callable[[argparse.Namespace], int]
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], SubcommandRun]] = {
    "plot": ("plot a run's training curves (TensorBoard scalars) to a PNG", _plot_arguments, _plot_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppo_dist", description="Distributed PPO for causal language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ppo_dist`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    _, _, run = SUBCOMMANDS[args.command]
    try:
        return run(args)
    except CommandError as e:
        print(f"ppo_dist {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
