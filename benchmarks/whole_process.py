"""Whole-process costs of runtree_pipeline, measured the way a user feels them: wall time of entire commands.

Run by hand (not a test):

    python benchmarks/whole_process.py [--repeats 3] [--only fixed,warmup,throughput] [--quick]
    python benchmarks/whole_process.py --only scale       # minutes at full size; not in the default set
    python benchmarks/whole_process.py --only server      # against a local `mlflow server`; not in the default set
    python benchmarks/whole_process.py --only pictures    # plots on vs plots=false at the tutorial's shapes
    python benchmarks/whole_process.py --only pictures-scale --repeats 1   # the same at 20,000 leaves; 15-30 min
    python benchmarks/whole_process.py --only commands    # command leaves vs a subprocess loop; not in the default set

Sections (the performance targets of issue 10; `--quick` shrinks every size for a smoke run, where only the
size-independent targets mean anything):

- fixed: a one-leaf pipeline through the CLI (plots on, and plots=false) vs a process that only opens the same
  kind of store, `MlflowClient(URI).search_experiments()`. Target: runtree ÷ client <= 1.3.
- warmup: 16 leaves sleeping 1 s, `executor=processes executor.workers=4` (and `executor=ray` with 4 workers when
  Ray is installed, `executor=slurm executor.max_jobs=4` when a Slurm cluster answers) vs `executor=local`.
  Targets: local - processes >= 10 s, local - ray >= 8 s; for Slurm, where every job is a fresh interpreter, the
  median time from a job's process start to its target's call (<= 1.5 s) and the most leaves in flight at once.
- throughput: the tutorial shape, 5 variants x 60 sub-variants on sqlite, `+sweep=tutorial` vs the tutorial's
  hand-written loop (tracking_overhead.SEED_LOOP). Targets: loop ÷ runtree >= 1.5; plots' share of the runtree
  command, (plots on - plots off) / plots off, <= 10%.
- scale: 2,000 and 20,000 leaves of a trivial target, plots off: ms/run at each size and their ratio (<= 1.2),
  peak RSS and its slope per leaf (<= 2 KB); then on the larger store `resume=last` with nothing left to do and
  `runtree tree`, each <= 10 s and <= 500 MB.
- pictures: plots on vs plots=false, default settings otherwise, at the tutorial's shapes 5 x 25 and 5 x 60 on
  sqlite. Target: pictures' share of the whole command, (on - off) / off, <= 10% at each shape (issue 18).
- pictures-scale: the same at 20,000 leaves in 2,000 parents (the scale section's pipeline), and the driver's peak
  RSS slope per leaf with plots on, between 2,000 and 20,000 leaves (`%M` covers the painter too, which it reaps,
  but the painter stays far below the driver). Targets: share <= 10%; slope <= 2 KB/leaf.
- commands: 40 leaves that each run a trivial Python script (no MLflow import) as a `command`, `executor=processes`
  with 2 workers, plots off, vs a plain program that runs the same 40 scripts with `subprocess.run` over 2 threads
  and records each as a child run with the three-call floor. Target: runtree ÷ loop <= 1.3 (issue 19).
- server: the tutorial shape 5 x 25 against `mlflow server` in its default form: ms/run from the store's own run
  timestamps (as in tracking_overhead.py) and the whole command's wall. Target: loop ÷ runtree >= 10 per run.

How: every contender is a whole process started with `subprocess.run` and timed with `time.perf_counter` around
it; peak RSS, where asked, is `/usr/bin/time -f %M` (KB) of that process. Contenders run alternately, A B A B ...,
`--repeats` times, each on its own sqlite store copied beforehand from one template store (so schema creation is
in nobody's time); medians per contender and ratios come from the same invocation. Every process runs in a scratch
working directory outside any git work tree (so no git provenance lookups), with MLFLOW_* variables dropped
(tracking_overhead.env). At the end one markdown table, headed by the exact command line, is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

# The tutorial loop, the child environment and ms/run from the store are tracking_overhead.py's: one definition of
# each contender across the benchmarks. `python benchmarks/whole_process.py` already has this directory on sys.path;
# the insert keeps the import working however the file is started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking_overhead import SEED_LOOP, env, ms_per_run  # noqa: E402

from runtree_pipeline.tracking.localserver import LocalMlflowServer  # noqa: E402

PY = sys.executable
TIME = Path("/usr/bin/time")
SECTIONS = ("fixed", "warmup", "throughput", "scale", "server", "pictures", "pictures-scale", "commands")
DEFAULT_SECTIONS = ("fixed", "warmup", "throughput")


@dataclass(frozen=True)
class Sizes:
    """Every size a section uses, so `--quick` is one substitution rather than a branch per section."""

    sleepers: int = 16  # warmup: leaves
    sleep_s: float = 1.0  # warmup: seconds each leaf sleeps
    workers: int = 4  # warmup: processes / Ray workers
    variants: int = 5  # throughput and server: parents (the tutorial's tests)
    subvariants: int = 60  # throughput: children per parent
    server_subvariants: int = 25  # server: children per parent
    scale: tuple[int, int] = (2_000, 20_000)  # scale and pictures-scale: leaves, smaller and larger
    pictured: tuple[int, ...] = (25, 60)  # pictures: children per parent, each with `variants` parents
    commands: int = 40  # commands: leaves, each a program
    command_workers: int = 2  # commands: processes / threads


FULL = Sizes()
QUICK = Sizes(
    sleepers=8, sleep_s=0.5, subvariants=10, server_subvariants=5, scale=(200, 2_000), pictured=(5, 10), commands=10
)

# Targets written into the scratch working directory: the benchmark must not depend on tests/, and the working
# directory is importable for `_target_`s (and for processes and Ray workers, which inherit it).
TARGETS = '''
import time


def sleepy(*, seconds: float, i: int) -> dict:
    """Stands for a leaf whose cost is all in the target: only the executor's overlap can save time. It notes when
    it was called, how long after its process started (a Slurm job's start-up), and when it ended."""
    import psutil

    called = time.time()
    since_start = called - psutil.Process().create_time()
    time.sleep(seconds)
    return {"loss": float(i), "called": called, "since_process_start": since_start, "ended": time.time()}


def fast(*, v: int, s: int) -> dict:
    """Costs nothing, so the per-run cost of the tree walk and the store is all that is measured."""
    return {"loss": float(v * 10 + s)}
'''

FIXED_SWEEP = """
# @package _global_
objective: {metric: metric1, mode: min}
stages:
  trial:
    _target_: runtree_pipeline.examples.tutorial.trial
    params: {test_no: 0, param1: a, param2: d, draw: 0.5}
"""

WARMUP_SWEEP = """
# @package _global_
objective: {{metric: loss}}
stages:
  sleep:
    _target_: bench_targets.sleepy
    params: {{seconds: {seconds}}}
    subvariants:
      params: {{i: "range(0, {leaves})"}}
"""

# Leaves = variants x 10. The range is in the file, not an override: Hydra reads `range(...)` on the command line
# as a multirun sweep.
SCALE_SWEEP = """
# @package _global_
objective: {{metric: loss}}
stages:
  grid:
    _target_: bench_targets.fast
    variants:
      params: {{v: "range(0, {variants})"}}
    subvariants:
      params: {{s: "range(0, 10)"}}
"""

# A program as trivial as a leaf can be: no MLflow, one result written where runtree (or the loop) asks.
COMMAND_LEAF = """
import json, os, sys

args = dict(a.split("=", 1) for a in sys.argv[1:])
with open(os.environ["RUNTREE_RESULT"], "w") as fh:
    json.dump({"loss": float(args["i"])}, fh)
"""

COMMAND_SWEEP = """
# @package _global_
objective: {{metric: loss}}
stages:
  leaves:
    command: python bench_leaf.py
    subvariants:
      params: {{i: "range(0, {leaves})"}}
"""

# The same leaves without runtree: a parent run, the scripts over a thread pool, each recorded as a child run with
# the three-call floor (create_run, log_batch, set_terminated), its result read back from the file it wrote.
COMMAND_LOOP = """
import json, os, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
client = MlflowClient(sys.argv[1])
exp = client.create_experiment(sys.argv[2])
parent = client.create_run(exp, run_name="leaves").info.run_id
results = tempfile.mkdtemp()
def leaf(i):
    run = client.create_run(exp, run_name=f"i={i}", tags={"mlflow.parentRunId": parent}).info.run_id
    path = os.path.join(results, f"{i}.json")
    subprocess.run([sys.executable, "bench_leaf.py", f"i={i}"], check=True, env={**os.environ, "RUNTREE_RESULT": path})
    with open(path) as fh:
        result = json.load(fh)
    now = int(time.time() * 1000)
    client.log_batch(run, metrics=[Metric(k, v, now, 0) for k, v in result.items()], params=[Param("i", str(i))])
    client.set_terminated(run)
with ThreadPoolExecutor(int(sys.argv[4])) as pool:
    list(pool.map(leaf, range(int(sys.argv[3]))))
client.set_terminated(parent)
"""

OPEN_STORE = "import sys; from mlflow import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"


@dataclass
class Sample:
    """One whole-process run: wall time, peak RSS when asked, and where it recorded (to read ms/run afterwards)."""

    wall: float
    rss_kb: int | None
    uri: str
    experiment: str


@dataclass
class Contender:
    """A command line built from (tracking uri, tag); the tag doubles as its experiment name, unique per run."""

    label: str
    command: Callable[[str, str], list[str]]


@dataclass
class Row:
    section: str
    what: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass
class Bench:
    """The scratch layout every section shares: a working directory, a config dir and a template store."""

    root: Path
    sizes: Sizes
    repeats: int
    rows: list[Row] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    def setup(self) -> None:
        """Targets, sweep files and the template store are made once, before anything is timed."""
        self.work.mkdir(parents=True)
        (self.work / "bench_targets.py").write_text(TARGETS.lstrip())
        (self.work / "bench_leaf.py").write_text(COMMAND_LEAF.lstrip())
        sweeps = self.conf / "sweep"
        sweeps.mkdir(parents=True)
        (sweeps / "fixed.yaml").write_text(FIXED_SWEEP.lstrip())
        warmup = WARMUP_SWEEP.format(seconds=self.sizes.sleep_s, leaves=self.sizes.sleepers)
        (sweeps / "warmup.yaml").write_text(warmup.lstrip())
        for leaves in self.sizes.scale:
            (sweeps / f"scale{leaves}.yaml").write_text(SCALE_SWEEP.format(variants=leaves // 10).lstrip())
        (sweeps / "commands.yaml").write_text(COMMAND_SWEEP.format(leaves=self.sizes.commands).lstrip())
        (self.root / "stores").mkdir()
        template = self.root / "template.db"
        self.run([PY, "-c", OPEN_STORE, f"sqlite:///{template}"], tag="template")

    def fresh_store(self, tag: str) -> str:
        """A copy of the template: the schema migrations (seconds) are paid once, outside every timing."""
        path = self.root / "stores" / f"{tag}.db"
        shutil.copyfile(self.root / "template.db", path)
        return f"sqlite:///{path}"

    def pipeline(self, *overrides: str, tag: str) -> list[str]:
        """`python -m runtree_pipeline` with the scratch config dir and a Hydra run dir outside the repo."""
        return [
            PY,
            "-m",
            "runtree_pipeline",
            "--config-dir",
            str(self.conf),
            *overrides,
            f"hydra.run.dir={self.root / 'outputs' / tag}",
        ]

    def run(self, cmd: list[str], *, tag: str, rss: bool = False) -> tuple[float, int | None]:
        """Wall time of the whole process (and its peak RSS in KB via /usr/bin/time); a failure stops the
        benchmark with the command's stderr, since a number from a broken run would mislead."""
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        rss_file = logs / f"{tag}.rss"
        full = [str(TIME), "-f", "%M", "-o", str(rss_file), *cmd] if rss else cmd
        with open(logs / f"{tag}.err", "w") as err:
            started = time.perf_counter()
            done = subprocess.run(full, cwd=self.work, env=env(), stdout=subprocess.DEVNULL, stderr=err)
            wall = time.perf_counter() - started
        if done.returncode != 0:
            tail = (logs / f"{tag}.err").read_text()[-3000:]
            raise SystemExit(f"exit {done.returncode}: {shlex.join(cmd)}\n{tail}")
        peak = int(rss_file.read_text().split()[-1]) if rss else None
        return wall, peak

    def alternate(
        self,
        section: str,
        contenders: Sequence[Contender],
        *,
        store: Callable[[str], str] | None = None,
        rss: bool = False,
    ) -> dict[str, list[Sample]]:
        """A B A B ...: drift on a shared machine (other jobs, thermal state) then hits every contender alike."""
        store = store or self.fresh_store
        samples: dict[str, list[Sample]] = {c.label: [] for c in contenders}
        for i in range(self.repeats):
            for n, contender in enumerate(contenders):
                tag = f"{section}-{n}-{i}"
                uri = store(tag)
                wall, peak = self.run(contender.command(uri, tag), tag=tag, rss=rss)
                samples[contender.label].append(Sample(wall, peak, uri, tag))
                print(f"  {section}: {contender.label}: {wall:.2f} s", file=sys.stderr, flush=True)
        return samples

    def add(self, section: str, what: str, value: str, target: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(section, what, value, target, met))


def median_wall(samples: list[Sample]) -> float:
    return statistics.median(s.wall for s in samples)


def median_rss_mb(samples: list[Sample]) -> float:
    return statistics.median(s.rss_kb or 0 for s in samples) / 1024


def fixed(bench: Bench) -> None:
    """Start-up of a trivial pipeline against the floor any MLflow-using process pays: interpreter, imports and
    opening the store. What is left is runtree's own import, config and recording cost."""
    on = Contender("runtree, one leaf, plots on", lambda uri, tag: bench.pipeline(*_fixed(uri, tag), tag=tag))
    off = Contender(
        "runtree, one leaf, plots=false", lambda uri, tag: bench.pipeline(*_fixed(uri, tag), "plots=false", tag=tag)
    )
    client = Contender("MlflowClient(URI).search_experiments()", lambda uri, tag: [PY, "-c", OPEN_STORE, uri])
    walls = {label: median_wall(s) for label, s in bench.alternate("fixed", [on, off, client]).items()}
    for label, wall in walls.items():
        bench.add("fixed", label, f"{wall:.2f} s")
    floor = walls[client.label]
    ratio = walls[on.label] / floor
    bench.add("fixed", "plots on ÷ client", f"{ratio:.2f}×", "≤ 1.3×", ratio <= 1.3)
    bench.add("fixed", "plots=false ÷ client", f"{walls[off.label] / floor:.2f}×")


def _fixed(uri: str, tag: str) -> list[str]:
    return ["+sweep=fixed", f"tracking_uri={uri}", f"experiment={tag}"]


def warmup(bench: Bench) -> None:
    """Leaves that only sleep: what an executor saves is overlap minus its own start-up (spawning workers,
    importing the target in each), which is what a user with slow leaves weighs when choosing one."""
    sizes = bench.sizes

    def executor(*overrides: str) -> Callable[[str, str], list[str]]:
        return lambda uri, tag: bench.pipeline(
            "+sweep=warmup", f"tracking_uri={uri}", f"experiment={tag}", "plots=false", *overrides, tag=tag
        )

    contenders = [
        Contender("executor=local", executor("executor=local")),
        Contender(
            f"executor=processes, {sizes.workers} workers",
            executor("executor=processes", f"executor.workers={sizes.workers}"),
        ),
    ]
    if importlib.util.find_spec("ray") is not None:
        # Ray admits a task only when its num_cpus fit: with 1 CPU per leaf a 2-core machine would run 2 at once,
        # not `workers`. Sleeping leaves need no CPU, so each asks for a share that lets `workers` run together.
        share = min(1.0, (os.cpu_count() or 1) / sizes.workers)
        contenders.append(
            Contender(
                f"executor=ray, {sizes.workers} workers",
                executor("executor=ray", f"executor.workers={sizes.workers}", f"executor.num_cpus={share:g}"),
            )
        )
    slurm = _slurm_is_up()
    if slurm:
        contenders.append(
            Contender(
                f"executor=slurm, {sizes.workers} workers",
                executor("executor=slurm", f"executor.max_jobs={sizes.workers}"),
            )
        )
    samples = bench.alternate("warmup", contenders)
    walls = {label: median_wall(s) for label, s in samples.items()}
    shape = f"{sizes.sleepers} leaves × {sizes.sleep_s:g} s"
    local = walls["executor=local"]
    for label, wall in walls.items():
        bench.add("warmup", f"{label} ({shape})", f"{wall:.2f} s")
    for label, wall in walls.items():
        if label == "executor=local":
            continue
        saving = local - wall
        processes = label.startswith("executor=processes")
        ray = label.startswith("executor=ray")
        bench.add(
            "warmup",
            f"saving, local - {label.split(',')[0].removeprefix('executor=')}",
            f"{saving:.2f} s",
            "≥ 10 s" if processes else "≥ 8 s" if ray else "",
            saving >= 10 if processes else saving >= 8 if ray else None,
        )
    if slurm:
        label = next(label for label in samples if label.startswith("executor=slurm"))
        starts, flight = [], []
        for sample in samples[label]:
            leaves = _leaf_metrics(sample.uri, sample.experiment)
            starts += [m["since_process_start"] for m in leaves]
            flight.append(_most_at_once(leaves))
        bench.add(
            "warmup",
            "slurm: median from a job's process start to its target's call",
            f"{statistics.median(starts):.2f} s",
            "≤ 1.5 s",
            statistics.median(starts) <= 1.5,
        )
        bench.add("warmup", "slurm: most leaves in flight at once (each run)", ", ".join(map(str, flight)))


def _slurm_is_up() -> bool:
    """A Slurm cluster answers here (scripts/slurm-cluster.sh up); its section is left out otherwise."""
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and any(s in done.stdout for s in ("idle", "mixed", "allocated"))


def _leaf_metrics(uri: str, experiment: str) -> list[dict[str, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (found,) = client.search_experiments(filter_string=f"name = '{experiment}'")
    runs = client.search_runs([found.experiment_id], "tags.`runtree.level` = 'subvariant'", max_results=1000)
    return [dict(run.data.metrics) for run in runs]


def _most_at_once(leaves: list[dict[str, float]]) -> int:
    edges = sorted([(m["called"], 1) for m in leaves] + [(m["ended"], -1) for m in leaves])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def tutorial_with_and_without_plots(bench: Bench, children: int) -> tuple[Contender, Contender]:
    """`+sweep=tutorial` with `children` trials per test, plots on and plots=false."""

    def runtree(*extra: str) -> Callable[[str, str], list[str]]:
        return lambda uri, tag: bench.pipeline(
            "+sweep=tutorial",
            f"stages.tuning.subvariants.n={children}",
            f"tracking_uri={uri}",
            f"experiment={tag}",
            *extra,
            tag=tag,
        )

    shape = f"{bench.sizes.variants} × {children}"
    on = Contender(f"runtree +sweep=tutorial, plots on ({shape})", runtree())
    return on, Contender(f"runtree +sweep=tutorial, plots=false ({shape})", runtree("plots=false"))


def throughput(bench: Bench) -> None:
    """The tutorial's own job, done both ways, end to end: the hand-written loop pays no plots and no tree
    bookkeeping, runtree pays its imports and plots; plots off separates the two."""
    sizes = bench.sizes

    on, off = tutorial_with_and_without_plots(bench, sizes.subvariants)
    shape = f"{sizes.variants} × {sizes.subvariants}"
    loop = Contender(
        f"tutorial loop as written ({shape})",
        lambda uri, tag: [PY, "-c", SEED_LOOP, uri, tag, str(sizes.variants), str(sizes.subvariants)],
    )
    walls = {label: median_wall(s) for label, s in bench.alternate("throughput", [on, off, loop]).items()}
    for label, wall in walls.items():
        bench.add("throughput", label, f"{wall:.2f} s")
    speedup = walls[loop.label] / walls[on.label]
    bench.add("throughput", "loop ÷ runtree (plots on)", f"{speedup:.2f}×", "≥ 1.5×", speedup >= 1.5)
    bench.add("throughput", "loop ÷ runtree (plots=false)", f"{walls[loop.label] / walls[off.label]:.2f}×")
    share = (walls[on.label] - walls[off.label]) / walls[off.label]
    bench.add("throughput", "plots' share, (on - off) / off", f"{share:.1%}", "≤ 10%", share <= 0.10)


def scale(bench: Bench) -> None:
    """Cost per run and memory per leaf must stay flat as a sweep grows tenfold; then the two commands that read
    a whole big tree back (resume with nothing to do, `runtree tree`) must stay interactive."""
    small, large = bench.sizes.scale

    def size(leaves: int) -> Contender:
        return Contender(
            f"{leaves:,} leaves",
            lambda uri, tag: bench.pipeline(
                f"+sweep=scale{leaves}", f"tracking_uri={uri}", f"experiment={tag}", "plots=false", tag=tag
            ),
        )

    samples = bench.alternate("scale", [size(small), size(large)], rss=True)
    per_run: dict[int, float] = {}
    peak_kb: dict[int, float] = {}
    for leaves in (small, large):
        runs = 1 + leaves // 10 + leaves  # the stage run, its variant runs, the leaves
        wall = median_wall(samples[f"{leaves:,} leaves"])
        per_run[leaves] = wall / runs * 1000
        peak_kb[leaves] = statistics.median(s.rss_kb or 0 for s in samples[f"{leaves:,} leaves"])
        summary = f"{wall:.1f} s, {per_run[leaves]:.2f} ms/run, {peak_kb[leaves] / 1024:.0f} MB"
        bench.add("scale", f"{leaves:,} leaves ({runs:,} runs), plots=false", summary)
    growth = per_run[large] / per_run[small]
    bench.add("scale", f"ms/run {large:,} ÷ {small:,}", f"{growth:.2f}×", "≤ 1.2×", growth <= 1.2)
    slope = (peak_kb[large] - peak_kb[small]) / (large - small)
    bench.add("scale", "peak RSS slope", f"{slope:.2f} KB/leaf", "≤ 2 KB/leaf", slope <= 2)

    big = samples[f"{large:,} leaves"][-1]
    runtree = Path(PY).with_name("runtree")
    tree = [str(runtree) if runtree.exists() else "runtree", "tree", "--tracking-uri", big.uri]
    readers = [
        Contender(
            f"resume=last, nothing to do ({large:,} leaves)",
            lambda uri, tag: bench.pipeline(
                f"+sweep=scale{large}",
                f"tracking_uri={uri}",
                f"experiment={big.experiment}",
                "plots=false",
                "resume=last",
                tag=tag,
            ),
        ),
        Contender(f"runtree tree ({large:,} leaves)", lambda uri, tag: [*tree, "--experiment", big.experiment]),
    ]
    for label, runs in bench.alternate("scale-read", readers, store=lambda tag: big.uri, rss=True).items():
        wall, mb = median_wall(runs), median_rss_mb(runs)
        bench.add("scale", f"{label}, wall", f"{wall:.2f} s", "≤ 10 s", wall <= 10)
        bench.add("scale", f"{label}, peak RSS", f"{mb:.0f} MB", "≤ 500 MB", mb <= 500)


def pictures(bench: Bench) -> None:
    """What the pictures cost a user: the same command with and without them, alternated on fresh stores, at the
    tutorial's shape and a longer one. The painter draws on the second core while the driver records, so its share
    depends on what else the machine runs: repeat, and read the medians."""
    sizes = bench.sizes
    for children in sizes.pictured:

        on, off = tutorial_with_and_without_plots(bench, children)
        shape = f"{sizes.variants} × {children}"
        samples = bench.alternate(f"pictures{children}", [on, off])
        for contender in (on, off):
            bench.add("pictures", contender.label, f"{median_wall(samples[contender.label]):.2f} s")
        _share(bench, "pictures", shape, samples[on.label], samples[off.label])


def pictures_scale(bench: Bench) -> None:
    """Pictures at scale: 2,000 parents of 10 leaves each, every one pictured, against plots=false; and whether the
    pictures make the driver's memory grow with the tree (peak RSS at two sizes, plots on)."""
    small, large = bench.sizes.scale

    def size(leaves: int, *extra: str) -> Contender:
        what = "plots=false" if extra else "plots on"
        return Contender(
            f"{leaves:,} leaves, {what}",
            lambda uri, tag: bench.pipeline(
                f"+sweep=scale{leaves}", f"tracking_uri={uri}", f"experiment={tag}", *extra, tag=tag
            ),
        )

    contenders = [size(small), size(small, "plots=false"), size(large), size(large, "plots=false")]
    samples = bench.alternate("pictures-scale", contenders, rss=True)
    peak_kb: dict[str, float] = {}
    for contender in contenders:
        runs = samples[contender.label]
        leaves = small if contender.label.startswith(f"{small:,} ") else large
        wall = median_wall(runs)
        peak_kb[contender.label] = statistics.median(s.rss_kb or 0 for s in runs)
        per_run = wall / (1 + leaves // 10 + leaves) * 1000
        summary = f"{wall:.1f} s, {per_run:.2f} ms/run, {peak_kb[contender.label] / 1024:.0f} MB"
        bench.add("pictures-scale", contender.label, summary)
    for leaves in (small, large):
        shape = f"{leaves:,} leaves in {leaves // 10:,} parents"
        _share(
            bench,
            "pictures-scale",
            shape,
            samples[f"{leaves:,} leaves, plots on"],
            samples[f"{leaves:,} leaves, plots=false"],
            target=leaves == large,
        )
    for what in ("plots on", "plots=false"):
        slope = (peak_kb[f"{large:,} leaves, {what}"] - peak_kb[f"{small:,} leaves, {what}"]) / (large - small)
        on = what == "plots on"
        bench.add(
            "pictures-scale",
            f"peak RSS slope, {small:,} → {large:,} leaves, {what}",
            f"{slope:.2f} KB/leaf",
            "≤ 2 KB/leaf" if on else "",
            slope <= 2 if on else None,
        )


def _share(bench: Bench, section: str, shape: str, on: list[Sample], off: list[Sample], *, target: bool = True) -> None:
    """Pictures' share of the whole command from medians, and the spread of the paired runs beside it: on a
    shared machine one pair can say 30% and the next -1%."""
    share = (median_wall(on) - median_wall(off)) / median_wall(off)
    pairs = ", ".join(f"{(a.wall - b.wall) / b.wall:+.0%}" for a, b in zip(on, off, strict=True))
    bench.add(
        section,
        f"pictures' share ({shape}), (on - off) / off; pairs: {pairs}",
        f"{share:.1%}",
        "≤ 10%" if target else "",
        share <= 0.10 if target else None,
    )


def commands(bench: Bench) -> None:
    """What running a user's program as a leaf costs over running it by hand: the plain loop pays the programs, one
    MLflow import and the floor's three calls per run; runtree pays its imports, the worker pool and, per leaf, its
    program's logs, params and the read-back of what the program logged."""
    sizes = bench.sizes
    shape = f"{sizes.commands} leaves, {sizes.command_workers} workers"
    runtree = Contender(
        f"runtree, command leaves ({shape})",
        lambda uri, tag: bench.pipeline(
            "+sweep=commands",
            f"tracking_uri={uri}",
            f"experiment={tag}",
            "executor=processes",
            f"executor.workers={sizes.command_workers}",
            "progress=false",
            "plots=false",
            tag=tag,
        ),
    )
    loop = Contender(
        f"subprocess.run loop, 3 calls/run ({shape})",
        lambda uri, tag: [PY, "-c", COMMAND_LOOP, uri, tag, str(sizes.commands), str(sizes.command_workers)],
    )
    samples = bench.alternate("commands", [runtree, loop])
    for label, runs in samples.items():
        walls = ", ".join(f"{s.wall:.2f}" for s in runs)
        bench.add("commands", f"{label}; runs: {walls} s", f"{median_wall(runs):.2f} s")
    ratio = median_wall(samples[runtree.label]) / median_wall(samples[loop.label])
    bench.add("commands", "runtree ÷ loop", f"{ratio:.2f}×", "≤ 1.3×", ratio <= 1.3)


def server(bench: Bench) -> None:
    """Against a server every round trip costs milliseconds, so whether runtree overlaps them shows; ms/run comes
    from the store's own timestamps (start-up counts for nobody), the wall from the whole command beside it."""
    sizes = bench.sizes
    shape = f"{sizes.variants} × {sizes.server_subvariants}"
    runtree = Contender(
        f"runtree +sweep=tutorial ({shape})",
        lambda uri, tag: bench.pipeline(
            "+sweep=tutorial",
            f"stages.tuning.subvariants.n={sizes.server_subvariants}",
            f"tracking_uri={uri}",
            f"experiment={tag}",
            tag=tag,
        ),
    )
    loop = Contender(
        f"tutorial loop as written ({shape})",
        lambda uri, tag: [PY, "-c", SEED_LOOP, uri, tag, str(sizes.variants), str(sizes.server_subvariants)],
    )
    root = bench.root / "server"
    root.mkdir()
    # The default form users run (uvicorn's 4 workers), as tracking_overhead.py measures it; stopped however the
    # section ends, so no server outlives the benchmark.
    mlflow_server = LocalMlflowServer(root, workers=None, env=env()).start()
    try:
        samples = bench.alternate("server", [runtree, loop], store=lambda tag: mlflow_server.url)
        per_run = {
            label: statistics.median(ms_per_run(s.uri, s.experiment)[0] for s in runs)
            for label, runs in samples.items()
        }
    finally:
        mlflow_server.stop()
    for label, runs in samples.items():
        bench.add("server", label, f"{per_run[label]:.1f} ms/run, {median_wall(runs):.2f} s wall")
    speedup = per_run[loop.label] / per_run[runtree.label]
    bench.add("server", "loop ÷ runtree, per run", f"{speedup:.1f}×", "≥ 10×", speedup >= 10)
    bench.add(
        "server",
        "loop ÷ runtree, wall",
        f"{median_wall(samples[loop.label]) / median_wall(samples[runtree.label]):.2f}×",
    )


def table(bench: Bench, argv: Sequence[str], quick: bool) -> str:
    """Markdown to paste into the README: the command that produced it first, so the numbers can be redone."""
    lines = [
        f"`{shlex.join(['python', *argv])}`",
        "",
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, mlflow {version('mlflow')}; "
        f"medians of {bench.repeats}, contenders alternated"
        + (" (quick sizes: only size-independent targets apply)" if quick else ""),
        "",
        "| section | measurement | value | target | met |",
        "|---|---|---:|---:|:---:|",
    ]
    for row in bench.rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.section} | {row.what} | {row.value} | {row.target} | {met} |")
    return "\n".join(lines)


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "fixed": fixed,
    "warmup": warmup,
    "throughput": throughput,
    "scale": scale,
    "server": server,
    "pictures": pictures,
    "pictures-scale": pictures_scale,
    "commands": commands,
}


def sections(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender, alternated; medians are shown")
    parser.add_argument(
        "--only",
        type=sections,
        default=list(DEFAULT_SECTIONS),
        help=f"comma-separated sections of {','.join(SECTIONS)} (default: {','.join(DEFAULT_SECTIONS)})",
    )
    parser.add_argument("--quick", action="store_true", help="shrink every size: a smoke run, not a measurement")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (stores, logs) afterwards")
    args = parser.parse_args()
    if not TIME.exists() and {"scale", "pictures-scale"} & set(args.only):
        parser.error(f"the scale sections read peak RSS from {TIME} (GNU time), which is missing")

    bench = Bench(Path(tempfile.mkdtemp(prefix="runtree-whole-")), QUICK if args.quick else FULL, args.repeats)
    try:
        bench.setup()
        for name in args.only:
            print(f"{name} ...", file=sys.stderr, flush=True)
            RUNNERS[name](bench)
    finally:
        if args.keep:
            print(f"scratch kept in {bench.root}", file=sys.stderr)
        else:
            shutil.rmtree(bench.root, ignore_errors=True)
    print(table(bench, sys.argv, args.quick))


if __name__ == "__main__":
    main()
