"""What recording the environment (`environment/requirements.txt`, `environment/git.diff`) costs a pipeline's start.

Run by hand (not a test):

    python benchmarks/environment_cost.py [--repeats 7]

In a scratch git repository holding a copy of this one's code with every `.py` file edited (a dirty tree whose
diff touches ~100 files), with this interpreter's installed distributions:

- collection: a fresh process times, with `time.perf_counter`, the one call the runner makes per pipeline,
  `environment_files(dirty=True)` (importlib.metadata over every installed distribution, then `git diff HEAD`),
  cold, as a pipeline meets it; beside it `invocation_tags`, which ran before this existed.
- whole process: a one-leaf pipeline through the CLI (plots and progress off), with the collection and without it
  (the same process with `environment_files` replaced by one returning nothing), alternated A B A B, each on its
  own store copied from one template. Target (issue 19): with - without <= 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking_overhead import env  # noqa: E402
from whole_process import FIXED_SWEEP as SWEEP  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


COLLECT = """
import json, time
t0 = time.perf_counter()
from runtree_pipeline.tracking.provenance import GIT_DIRTY, environment_files, invocation_tags
t1 = time.perf_counter()
tags = invocation_tags(None)
t2 = time.perf_counter()
files = environment_files(tags.get(GIT_DIRTY) == "true")
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "tags": t2 - t1, "collect": t3 - t2,
                  "dists": files["environment/requirements.txt"].count("\\n"),
                  "diff": len(files.get("environment/git.diff", ""))}))
"""

CLI = """
import sys
if sys.argv[1] == "without":
    import runtree_pipeline.execution.scheduler as scheduler
    scheduler.environment_files = lambda dirty: {}
sys.argv = ["runtree-pipeline", *sys.argv[2:]]
from runtree_pipeline.cli import main
main()
"""


def dirty_clone(root: Path) -> Path:
    """This repository's code under `code/` (not importable from the working directory, which would shadow the
    package under test), committed, then every `.py` file edited."""
    clone = root / "project"
    for part in ("runtree_pipeline", "tests"):
        shutil.copytree(REPO / part, clone / "code" / part, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.email=b@b", "-c", "user.name=b"]
    subprocess.run([*git, "init", "-q"], cwd=clone, check=True)
    subprocess.run([*git, "add", "code"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=clone, check=True)
    for path in clone.glob("code/**/*.py"):
        path.write_text(path.read_text() + "# edited\n")
    (clone / "conf_bench" / "sweep").mkdir(parents=True)
    (clone / "conf_bench" / "sweep" / "fixed.yaml").write_text(SWEEP)
    return clone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from runtree_pipeline.tracking.sqlite import create_sqlite_store

    with tempfile.TemporaryDirectory(prefix="runtree-envcost-") as tmp:
        root = Path(tmp)
        clone = dirty_clone(root)
        template = root / "template.db"
        create_sqlite_store(f"sqlite:///{template}")

        collected = []
        for _ in range(args.repeats):
            out = subprocess.run([PY, "-c", COLLECT], cwd=clone, env=env(), capture_output=True, text=True, check=True)
            collected.append(json.loads(out.stdout))

        walls: dict[str, list[float]] = {"with": [], "without": []}
        for i in range(args.repeats):
            for contender in ("with", "without"):
                store = root / f"{contender}-{i}.db"
                shutil.copy(template, store)
                cmd = [PY, "-c", CLI, contender, "--config-dir", str(clone / "conf_bench"), "+sweep=fixed"]
                cmd += [f"tracking_uri=sqlite:///{store}", "plots=false", "progress=false"]
                start = time.perf_counter()
                proc = subprocess.run(cmd, cwd=clone, env=env(), capture_output=True, text=True)
                walls[contender].append(time.perf_counter() - start)
                if proc.returncode != 0:
                    sys.exit(f"{contender} failed:\n{proc.stderr}")
        recorded = len(list(clone.glob("mlruns/**/environment/git.diff")))
        if recorded != args.repeats:  # the artifacts land under the working directory's ./mlruns
            sys.exit(f"expected {args.repeats} recorded diffs (one per run with), found {recorded}")

    def ms(key: str) -> str:
        values = [c[key] * 1000 for c in collected]
        return f"{statistics.median(values):.0f} ms (max {max(values):.0f})"

    with_s, without_s = statistics.median(walls["with"]), statistics.median(walls["without"])
    print(f"`{shlex.join(['python', 'benchmarks/environment_cost.py', *sys.argv[1:]])}`\n")
    print("| measurement | value |\n|---|---:|")
    print(f"| distributions listed / diff size | {collected[0]['dists']} / {collected[0]['diff'] / 1000:.0f} kB |")
    print(f"| `environment_files` in a fresh process, median of {args.repeats} | {ms('collect')} |")
    print(f"| `invocation_tags` (commit, dirty flag), for comparison | {ms('tags')} |")
    print(f"| one-leaf pipeline with / without, medians of {args.repeats} | {with_s:.2f} s / {without_s:.2f} s |")
    print(f"| with - without | {with_s - without_s:+.3f} s |")


if __name__ == "__main__":
    main()
