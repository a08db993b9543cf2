"""``python -m ppo_dist ...`` is the ``ppo_dist`` command."""

import sys

from ppo_dist.cli import main

sys.exit(main())
