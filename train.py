"""Distributed PPO training: ``accelerate launch train.py --config configs/seed.yaml [--section.field value ...]``."""

import logging
import os
import sys

from ppo_dist.config import ConfigError, parse_args, validate


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
        # The launcher sets WORLD_SIZE: check the batch arithmetic before torch and the models load.
        validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from ppo_dist.models import ModelLoadError
    from ppo_dist.trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except (ConfigError, ModelLoadError) as e:  # found while building: before any training or saving
        print(f"{'config' if isinstance(e, ConfigError) else 'model'} error: {e}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
