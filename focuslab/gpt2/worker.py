"""torchrun entry point: `python -m torch.distributed.run ... -m focuslab.gpt2.worker RUN_CONFIG.json`.
Each rank trains its part; the run resumes from its checkpoint when one exists for this config.

The first line a worker prints (before torch is imported) tells ``focuslab gpt2`` that the
rendezvous is over; a bad input is one line on stderr (``focuslab: error: ...``, exit 2), which the
launcher reports; Ctrl-C (torchrun passes SIGINT on) exits 130."""
import json
import os
import sys

from ..errors import FocuslabError
from .torchrun import MARKER


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    print(f"{MARKER} pid={os.getpid()} rank={os.environ.get('RANK', 0)}", flush=True)
    try:
        from .config import TrainConfig

        try:
            with open(argv[0]) as fh:
                cfg = TrainConfig(**json.load(fh))
        except (OSError, ValueError, TypeError) as err:
            raise FocuslabError(f"{argv[0] if argv else 'RUN_CONFIG'}: not a readable run config ({err})") from None
        from .train import train

        train(cfg, stream=sys.stdout)
    except FocuslabError as err:
        print(f"focuslab: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
