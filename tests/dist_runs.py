"""Several ``python -m fullscale.run`` commands in one ``torchrun`` launch, one after another, for
tests/test_fullscale_dist.py: the processes import torch and transformers and join the process
group once, not once per command. argv[1]: a JSON list of argument lists."""

import json
import sys

from fullscale import run

if __name__ == "__main__":
    for args in json.loads(sys.argv[1]):
        code = run.main(args)
        if code:
            raise SystemExit(code)
