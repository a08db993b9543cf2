"""Training entry point: ``accelerate launch train.py --config CONFIG.yaml [--section.field value ...]``.

``stage`` in the config (``--stage``) picks what is trained: ppo (default), or sft, rm, dpo through
TRL's trainers (see ``ppo_dist/stages``); the launch, exit codes and outputs are the same for all.
"""

import gc
import logging
import os
import signal
import sys

from ppo_dist.config import ConfigError, parse_args, validate


def main(argv=None) -> int:
    # Launchers (slurm/*) ignore SIGUSR1 for themselves; a stop request that arrives before the
    # trainer installs its checkpoint-and-stop handler must still end this process.
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
        # The launcher sets WORLD_SIZE: check the batch arithmetic before the models load.
        validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from ppo_dist.models import ModelLoadError
    from ppo_dist.rewards import RewardError
    from ppo_dist.rl.engines import RolloutEngineError
    from ppo_dist.rl.trainer import Trainer
    from ppo_dist.runtime.checkpoint import CheckpointError
    from ppo_dist.runtime.guards import KLGuardError, NumericsError
    from ppo_dist.stages import runner_class

    try:
        build = Trainer if cfg.stage == "ppo" else runner_class(cfg.stage)  # sft, rm, dpo: the same interface
        trainer = build(cfg)
    except (ConfigError, ModelLoadError) as e:  # found while building: before any training or saving
        print(f"{'config' if isinstance(e, ConfigError) else 'model'} error: {e}", file=sys.stderr)
        return 2
    except RolloutEngineError as e:  # the engine did not start
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        trainer.train()
    except (RewardError, NumericsError, KLGuardError, CheckpointError, RolloutEngineError) as e:  # explained already
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        trainer.close()
    return 0


def _exit(code: int) -> None:
    """Exit with ``code``. After a DeepSpeed run the interpreter's teardown is skipped (everything is
    saved, flushed and the process group destroyed by then): DeepSpeed's CPU communication threads
    occasionally abort it ("terminate called without an active exception"), which would turn a
    finished run into a failed one."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    # Exclude everything alive from the interpreter's final garbage collection: walking the object graph
    # of torch/transformers/trl takes seconds at exit, and a stopped job should leave at once (a launcher
    # SIGTERMs the other processes as soon as one has exited).
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as stop:  # a preemption (75) raised from inside the trainer
        status = stop.code if isinstance(stop.code, int) else 1
    _exit(status)
