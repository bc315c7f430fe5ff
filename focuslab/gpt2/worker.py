"""torchrun entry point: `torchrun ... -m focuslab.gpt2.worker RUN_CONFIG.json [--resume]`."""
import json
import sys

from .config import TrainConfig
from .train import train


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        cfg = TrainConfig(**json.load(fh))
    train(cfg, resume="--resume" in argv[1:])


if __name__ == "__main__":
    main()
