"""torchrun entry point: `python -m torch.distributed.run ... -m focuslab.gpt2.worker RUN_CONFIG.json`.
Each rank trains its part; the run resumes from its checkpoint when one exists for this config."""
import json
import sys

from .config import TrainConfig
from .train import train


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        cfg = TrainConfig(**json.load(fh))
    train(cfg)


if __name__ == "__main__":
    main()
