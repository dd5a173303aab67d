"""An argparse script: takes `--key=value` flags, writes its result where runtree asks, imports no MLflow."""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float, required=True)
parser.add_argument("--opt.name", dest="name", default="sgd")
parser.add_argument("--exit-code", dest="code", type=int, default=0)
parser.add_argument("--result", default=None, help="write the result here instead of $RUNTREE_RESULT")
args = parser.parse_args()
started = time.time()
if args.code:
    print(f"boom: x={args.x} is bad", file=sys.stderr)
    print("", file=sys.stderr)
    sys.exit(args.code)
result = {"loss": (args.x - 2) ** 2, "name": args.name, "cwd": os.getcwd(), "started": started, "ended": time.time()}
with open(args.result or os.environ["RUNTREE_RESULT"], "w") as fh:
    json.dump(result, fh)
