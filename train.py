"""Distributed PPO training: ``accelerate launch train.py --config configs/seed.yaml [--section.field value ...]``."""

import logging
import sys

from ppo_dist.config import ConfigError, parse_args
from ppo_dist.trainer import Trainer


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
