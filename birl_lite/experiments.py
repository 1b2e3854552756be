"""Run actor-critic algorithms x environments x seeds into one JSON file per run (resumable).

Example (the committed results of chapter 9)::

    python -m birl_lite.experiments --algos ppo ppo-nested blpo-cg blpo-nystrom \\
        --envs CartPole-v1 Acrobot-v1 --seeds 0 1 2 3 4 --steps 500000 --out results/blpo

Each run writes ``<out>/<env_id>__<algo>[__<overrides>]__steps<N>__seed<seed>.json`` atomically
(a uniquely named temporary file in the same folder, then ``os.replace``; strict JSON, no NaN),
holding the full configuration, the learning curve (env steps, mean of the last 20 episode
returns, wall time after every rollout), every completed training episode (env steps, return),
the final return (mean of the last 20 training episodes), the wall time and the CPU time (the
process's CPU seconds during training: unlike the wall time, it does not grow when the run shares
a busy machine or is paused; files written before it was recorded lack it).

Resuming and safety: a run whose finished file holds the *same* configuration is skipped, so an
interrupted command is resumed by running it again (the interrupted run starts over); a finished
file with another configuration (say, after a change of the package defaults) stops the command
with an error naming the differing fields, never a silent reuse. The output folder is checked for
writing before any training. A run is claimed by an exclusive lock file
(``<file>.lock``, holding host and pid), so two commands on one folder share the work instead of
redoing it; a lock left by a dead process on this host is taken over. A corrupted results file is
reported, moved aside (``<file>.corrupt``) and rerun. Runs are ordered seed-major (seed 0 of every
env and algorithm first) so that partial results are useful.

Parallel sweeps: ``--workers N`` trains N runs at a time on a local Ray instance (nothing is
written outside the output folder and the temporary folder; it works offline), ``--address``
joins an existing Ray cluster. The results are those of a sequential run, bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from ._io import write_json_atomic
from .actor_critic.config import ALGOS, ACConfig, make_config
from .actor_critic.training import train
from .plotting import confidence_band

__all__ = [
    "CurveBand",
    "add_parallel_arguments",
    "config_difference",
    "is_finished_file",
    "parse_seeds",
    "per_seed_ratios",
    "run_claimed_file",
    "run_on_ray",
    "PairedRow",
    "Run",
    "curve_auc",
    "curve_band",
    "curve_value_at",
    "diagnostic_quantiles",
    "group_results",
    "load_results",
    "main",
    "paired_table",
    "plan_runs",
    "run_experiment",
    "run_label",
    "steps_to_threshold",
    "summary_table",
    "write_json_atomic",
]


@dataclass(frozen=True)
class Run:
    """One (algorithm, environment, seed) with its configuration and output path."""

    config: ACConfig
    path: Path


def _suffix(overrides: dict) -> str:
    return "".join(f"__{k}={v}" for k, v in sorted(overrides.items()))


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_value(text: str, kind: str, name: str) -> Any:
    """``--set`` values by the field's declared type (``bool``, ``int``, ``float``, ``str``)."""
    if kind == "bool":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"--set {name}: expected true/false (or yes/no, 1/0), got {text!r}")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {name}: expected an integer, got {text!r}") from None
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--set {name}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"--set {name}: expected a finite number, got {text!r}")
        return value
    return text


def plan_runs(
    algos: Sequence[str],
    envs: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    out: str | os.PathLike,
    overrides: dict | None = None,
) -> list[Run]:
    """Validate every configuration first (clear ``ValueError`` before any training), then list
    the runs seed-major: for each seed, each env, each algorithm."""
    overrides = dict(overrides or {})
    for a in algos:
        if a not in ALGOS:
            raise ValueError(f"unknown algorithm {a!r}; choose from {list(ALGOS)}")
    for e in envs:
        if e not in gym.registry:
            raise ValueError(f"unknown environment id {e!r} (not registered in gymnasium)")
    out = Path(out)
    runs = []
    for seed in seeds:
        for env_id in envs:
            for algo in algos:
                cfg = make_config(algo, env_id, total_steps=int(steps), seed=int(seed), **overrides)
                name = f"{env_id}__{algo}{_suffix(overrides)}__steps{int(steps)}__seed{seed}.json"
                runs.append(Run(cfg, out / name))
    return runs


def _read_record(path: Path) -> dict | None:
    """The record of ``path``; ``None`` if there is no file. A file that is not a JSON object is
    reported (``warnings.warn``), moved aside to ``<file>.corrupt`` and treated as missing."""
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        record, why = None, f"unreadable ({exc})"
    else:
        why = None if isinstance(record, dict) else f"not a JSON object ({type(record).__name__})"
    if why is not None:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(
            f"results file {path} is corrupted: {why}; moved to {aside.name}, the run is redone",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return record


def config_difference(stored: dict, planned: dict, defaults: dict) -> list[str]:
    """Fields that differ between a stored and a planned configuration; a field missing from a
    file made before it existed counts as its default (new fields always default to the previous
    behaviour). Shared by every experiment command (chapters 5, 6, 9 and the neural RLHF one).
    Nested settings (dicts, as the RLHF agent's ``sac``) are compared field by field, a nested
    field reported as ``"outer.inner"``."""
    out = []
    for k in set(stored) | set(planned):
        s, p, d = stored.get(k, defaults.get(k)), planned.get(k, defaults.get(k)), defaults.get(k)
        if isinstance(s, dict) and isinstance(p, dict):
            inner = config_difference(s, p, d if isinstance(d, dict) else {})
            out += [f"{k}.{name}" for name in inner]
        elif s != p:
            out.append(k)
    return sorted(out)


def _config_difference(stored: dict, planned: dict) -> list[str]:
    return config_difference(stored, planned, {f.name: f.default for f in fields(ACConfig)})


def run_claimed_file(path: Path, planned: dict, defaults: dict, produce: Callable[[], dict]) -> str:
    """The unit of work of the results commands: claim ``path`` by its lock, then write
    ``produce()`` there atomically unless a finished file with the same configuration exists.

    Returns:
        ``"run"``, ``"skipped"`` (finished, same configuration) or ``"locked"`` (claimed by
        another command).

    Raises:
        ValueError: a finished file with another configuration (:func:`config_difference`).
    """
    lock = _Lock(path)
    if not lock.acquire():
        return "locked"
    try:
        if is_finished_file(path, planned, defaults):
            return "skipped"
        write_json_atomic(path, produce())
        return "run"
    finally:
        lock.release()


def is_finished_file(path: Path, planned: dict, defaults: dict) -> bool:
    """Whether ``path`` holds a finished run of the configuration ``planned``.

    Raises:
        ValueError: a finished file with another configuration (:func:`config_difference`).
    """
    record = _read_record(path)
    if record is None or not record.get("complete"):
        return False
    diff = config_difference(record.get("config", {}), planned, defaults)
    if diff:
        raise ValueError(
            f"results file {path} holds a finished run with another configuration "
            f"(differs in {diff}); delete it, or write to another --out folder"
        )
    return True


def parse_seeds(spec: Sequence[str]) -> list[int]:
    """Seeds from the command line: ``["0-19"]`` or ``["0", "3", "5"]`` (ranges inclusive)."""
    seeds: list[int] = []
    for item in spec:
        lo, _, hi = str(item).partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def _is_finished(run: Run) -> bool:
    """Whether ``run`` has a finished results file with its configuration.

    Raises:
        ValueError: a finished file with another configuration is in the way.
    """
    defaults = {f.name: f.default for f in fields(ACConfig)}
    return is_finished_file(run.path, run.config.to_dict(), defaults)


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file there: fail before training, not after."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"cannot write results into {folder}: {exc}") from exc


class _Lock:
    """An exclusive claim on one run: ``<results file>.lock`` created with ``O_EXCL``."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self.held = False

    def acquire(self) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
            self.held = True
            return True
        return False

    def _stale(self) -> bool:
        """A lock of a process of this host that no longer runs."""
        try:
            with open(self.path) as f:
                owner = json.load(f)
            host, pid = owner["host"], int(owner["pid"])
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError):
            # unreadable: being written right now, or left empty by a crash just after its
            # creation; only the latter is old
            try:
                return time.time() - self.path.stat().st_mtime > 60.0
            except OSError:
                return False
        if host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def run_one(run: Run, progress: Any = None) -> dict:
    """Train one run and write its results file; returns the record written."""
    cfg = run.config

    def callback(step: int, _result) -> None:
        if progress is not None:
            progress.n = min(step, cfg.total_steps)
            progress.refresh()

    res = train(cfg, callback=callback)
    record = {
        "complete": True,
        "algo": cfg.algo,
        "env_id": cfg.env_id,
        "seed": cfg.seed,
        "total_steps": cfg.total_steps,
        "config": cfg.to_dict(),
        "final_return": _finite_or_none(res.final_return),
        "wall_time": res.wall_time,
        "cpu_time": res.cpu_time,
        "curve": {
            "steps": res.curve_steps,
            "return_last20": [
                None if not math.isfinite(r) else round(r, 3) for r in res.curve_return
            ],
            "wall": [round(w, 3) for w in res.curve_wall],
        },
        "diagnostics": {
            key: [_finite_or_none(v) for v in values] for key, values in res.diagnostics.items()
        },
        "episodes": {
            "steps": res.episode_steps,
            "returns": [round(r, 3) for r in res.episode_returns],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gymnasium": gym.__version__,
        },
    }
    write_json_atomic(run.path, record)
    return record


def _run_claimed(run: Run, progress: Any = None) -> str:
    """Claim ``run`` by its lock and train it unless it is taken or finished meanwhile; returns
    ``"run"``, ``"locked"`` or ``"skipped"`` (the unit of work of every executor)."""
    lock = _Lock(run.path)
    if not lock.acquire():
        return "locked"
    try:
        if _is_finished(run):  # finished by another command since the plan was made
            return "skipped"
        run_one(run, progress)
        return "run"
    finally:
        lock.release()


def run_experiment(
    runs: Sequence[Run],
    *,
    progress: bool = True,
    workers: int = 1,
    address: str | None = None,
) -> dict[str, int]:
    """Run every run without a finished results file of the same configuration.

    Args:
        runs: from :func:`plan_runs`.
        progress: progress bars (over runs, and over the steps of the current run when
            sequential).
        workers: ``1`` trains the runs one after the other in this process; ``N > 1`` trains
            them in parallel on a local Ray instance with ``N`` CPUs (one run a CPU, one torch
            thread each; the numbers are those of a sequential run).
        address: join an existing Ray cluster (``"ray://host:10001"``, ``"auto"``) instead of
            starting a local one; ``workers`` is then ignored (the cluster's CPUs are used).

    The results files stay the single source of truth: each run is claimed by its lock file and
    written atomically by whichever process trains it, so a sequential command, a parallel one
    and a cluster can work on one folder together and be interrupted at any time.

    Returns:
        Counts ``{"run", "skipped", "locked"}`` (``locked``: claimed by another command).

    Raises:
        OSError: an output folder cannot be written (checked before any training).
        ValueError: a finished results file with another configuration is in the way, or a bad
            ``workers``.
    """
    from tqdm.auto import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    runs = [Run(r.config, Path(r.path).absolute()) for r in runs]
    for folder in sorted({r.path.parent for r in runs}):
        _check_writable(folder)
    todo = [r for r in runs if not _is_finished(r)]
    counts = {"run": 0, "skipped": len(runs) - len(todo), "locked": 0}
    outer = tqdm(
        total=len(runs), initial=counts["skipped"], desc="runs", disable=not progress, position=0
    )
    try:
        if workers == 1 and address is None:
            for run in todo:
                cfg = run.config
                inner = tqdm(
                    total=cfg.total_steps,
                    desc=f"{cfg.env_id} {cfg.algo} seed {cfg.seed}",
                    unit="step",
                    leave=False,
                    disable=not progress,
                    position=1,
                )
                try:
                    counts[_run_claimed(run, inner)] += 1
                finally:
                    inner.close()
                outer.update(1)
        elif todo:
            for outcome in _run_on_ray(todo, workers, address):
                counts[outcome] += 1
                outer.update(1)
    finally:
        outer.close()
    return counts


def _run_on_ray(todo: Sequence[Run], workers: int, address: str | None):
    """Yield the outcome of every run as Ray finishes them (one CPU each)."""
    yield from run_on_ray(_run_claimed, todo, workers, address)


_RAY_TOKEN: str | None = None


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every results command shares: ``--workers`` (an integer >= 1, checked when
    parsed), ``--address`` (a Ray cluster) and ``--no-progress``; see :func:`run_on_ray`."""

    def workers(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
        return value

    parser.add_argument(
        "--workers",
        type=workers,
        default=1,
        help="runs trained in parallel on a local Ray instance (1: one after the other, no Ray)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="join an existing Ray cluster at this address instead (e.g. auto, ray://host:10001)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_on_ray(func: Callable[[Any], Any], items: Sequence[Any], workers: int,
               address: str | None = None) -> Iterator[Any]:  # fmt: skip
    """Yield ``func(item)`` for every item, in the order Ray finishes them, one CPU each: the
    parallel executor of every results command (this module's and ``python -m birl_lite.rlhf``).

    Args:
        func: a module-level function (Ray pickles it by reference), e.g. a claim-and-write unit.
        items: its arguments, one task each.
        workers: CPUs of the local Ray instance started here.
        address: join an existing Ray cluster instead (``"ray://host:10001"``, ``"auto"``);
            ``workers`` is then ignored.
    """
    import secrets
    import shutil

    import ray

    session_dir = None
    if address is None:
        # A local instance: its token lives in this process's environment, so Ray writes no
        # token file under the home folder (it would by default); its session files go to a
        # fresh folder of the temporary folder (two commands never share one), removed at the
        # end. Offline is fine (no dashboard).
        # One token per process: Ray keeps the first one it read, so a second local instance
        # started by this process (another command, another test) must get the same.
        global _RAY_TOKEN
        _RAY_TOKEN = _RAY_TOKEN or secrets.token_hex(32)
        os.environ.setdefault("RAY_AUTH_TOKEN", _RAY_TOKEN)
        session_dir = tempfile.mkdtemp(prefix="ray-")
        # Ray waits a fixed 30 s for its raylet to register: a busy machine can miss that
        for attempt in range(3):
            try:
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    _temp_dir=session_dir,
                )
                break
            except Exception as exc:  # Ray raises a bare Exception for this timeout
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(exc):
                    shutil.rmtree(session_dir, ignore_errors=True)
                    raise
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(func)
        pending = [remote.remote(item) for item in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        ray.shutdown()
        if session_dir is not None:
            shutil.rmtree(session_dir, ignore_errors=True)


def load_results(folder: str | os.PathLike) -> list[dict]:
    """Every finished results file of ``folder`` (sorted by env, algo, overrides, seed)."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            with open(p) as f:
                rec = json.load(f)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable results file {p}: {exc}", RuntimeWarning, 2)
            continue
        if not isinstance(rec, dict):
            warnings.warn(f"skipping results file {p}: not a JSON object", RuntimeWarning, 2)
            continue
        if rec.get("complete"):
            rec["file"] = p.name
            out.append(rec)
    return out


def run_label(record: dict) -> str:
    """``algo`` plus the overrides that name the file (``blpo-nystrom__nystrom_rank=10``)."""
    name = record.get("file", "")
    parts = name.removesuffix(".json").split("__")
    parts = [p for p in parts[1:] if not (p.startswith("steps") or p.startswith("seed"))]
    return "__".join(parts) if parts else record["algo"]


def group_results(records: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """Records grouped by ``(env_id, run_label)``, seeds in increasing order.

    Raises:
        ValueError: two records of one group differ in anything but the seed (a summary would
            mix, say, two budgets).
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["env_id"], run_label(rec)), []).append(rec)
    for key, recs in groups.items():
        first = {k: v for k, v in recs[0].get("config", {}).items() if k != "seed"}
        for rec in recs[1:]:
            other = {k: v for k, v in rec.get("config", {}).items() if k != "seed"}
            diff = _config_difference(first, other)
            if diff:
                raise ValueError(
                    f"results of {key} mix configurations ({recs[0].get('file')} and "
                    f"{rec.get('file')} differ in {diff}): load one setting per folder"
                )
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


@dataclass
class CurveBand:
    """Learning curve across seeds: ``steps``, ``mean``, 95% t-interval ``lo``/``hi`` (equal to
    the mean for one seed), and ``n`` seeds. Curves are cut to the shortest run."""

    steps: list[int]
    mean: list[float]
    lo: list[float]
    hi: list[float]
    n: int


def curve_band(records: Sequence[dict]) -> CurveBand:
    """Mean and 95% confidence band (Student t across seeds) of the ``return_last20`` curves."""
    import numpy as np

    if not records:
        raise ValueError("records must not be empty")
    length = min(len(r["curve"]["steps"]) for r in records)
    steps = records[0]["curve"]["steps"][:length]
    Y = np.array(
        [
            [np.nan if y is None else y for y in r["curve"]["return_last20"][:length]]
            for r in records
        ],
        dtype=float,
    )
    n = len(records)
    mean, half = confidence_band(Y)
    return CurveBand(list(steps), mean.tolist(), (mean - half).tolist(), (mean + half).tolist(), n)


def steps_to_threshold(record: dict, threshold: float) -> int | None:
    """First env step at which the mean of the last 20 episodes reaches ``threshold``."""
    for step, y in zip(record["curve"]["steps"], record["curve"]["return_last20"], strict=True):
        if y is not None and y >= threshold:
            return step
    return None


def summary_table(records: Sequence[dict]) -> list[dict]:
    """One row per ``(env_id, run_label)``: seeds, steps, final return (mean of the last 20
    training episodes) mean / std / min over seeds, mean wall time and its ratio to ``ppo``'s on
    the same env (when ``ppo`` has results there), and the same for the CPU time (``cpu_mean``,
    ``cpu_ratio_to_ppo``: NaN unless every record of both groups has one; files written before
    it was recorded lack it)."""
    import numpy as np

    groups = group_results(records)
    rows = []
    for (env, label), recs in sorted(groups.items()):
        finals = np.array([r["final_return"] for r in recs], dtype=float)
        walls = np.array([r["wall_time"] for r in recs], dtype=float)
        ppo = groups.get((env, "ppo"))
        ppo_wall = float(np.mean([r["wall_time"] for r in ppo])) if ppo else float("nan")
        cpu = _mean_cpu_time(recs)
        ppo_cpu = _mean_cpu_time(ppo) if ppo else float("nan")
        rows.append(
            {
                "env_id": env,
                "label": label,
                "seeds": [r["seed"] for r in recs],
                "steps": recs[0]["total_steps"],
                "final_mean": float(finals.mean()),
                "final_std": float(finals.std(ddof=1)) if len(recs) > 1 else 0.0,
                "final_min": float(finals.min()),
                "wall_mean": float(walls.mean()),
                "wall_ratio_to_ppo": float(walls.mean()) / ppo_wall,
                "cpu_mean": cpu,
                "cpu_ratio_to_ppo": cpu / ppo_cpu,
            }
        )
    return rows


def per_seed_ratios(
    records: Sequence[dict], baseline: Sequence[dict], key: str
) -> list[float | None]:
    """Each record's ``key`` (``"wall_time"`` or ``"cpu_time"``) over that of the ``baseline``
    run with the same seed (chapter 9, section 9.11: costs compared seed by seed, each pair run
    under one load), in the order of ``records``; ``None`` where either run lacks the field
    (files written before ``cpu_time`` was recorded).

    Raises:
        ValueError: a seed of ``records`` has no run in ``baseline``.
    """
    base = {r["seed"]: r.get(key) for r in baseline}
    missing = sorted({r["seed"] for r in records} - set(base))
    if missing:
        raise ValueError(f"baseline has no run for seed(s) {missing}")
    return [r[key] / base[r["seed"]] if r.get(key) and base[r["seed"]] else None for r in records]


def _mean_cpu_time(records: Sequence[dict]) -> float:
    """Mean ``cpu_time`` of the records, NaN if any lacks one."""
    times = [r.get("cpu_time") for r in records]
    if not times or any(t is None for t in times):
        return float("nan")
    return sum(times) / len(times)


def _defined_curve(record: dict) -> tuple[Any, Any]:
    """The recorded points ``(steps, return_last20)`` with a value (a point recorded before the
    first episode finished has none)."""
    import numpy as np

    pts = [
        (s, y)
        for s, y in zip(record["curve"]["steps"], record["curve"]["return_last20"], strict=True)
        if y is not None
    ]
    if not pts:
        raise ValueError(f"{record.get('file', 'record')}: the curve has no finished episode")
    x, y = zip(*pts, strict=True)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def curve_value_at(record: dict, step: float) -> float:
    """The learning curve (mean of the last 20 episode returns) at env step ``step``, linearly
    interpolated between the recorded points.

    Before the first recorded value (no episode finished yet) the first value is held: it is the
    return of the first episodes, those of the initial policy.

    Raises:
        ValueError: ``step`` is negative or beyond the last recorded step (the run's budget).
    """
    import numpy as np

    x, y = _defined_curve(record)
    last = record["curve"]["steps"][-1]
    if not 0 <= step <= last:
        raise ValueError(f"step {step} is outside the recorded curve [0, {last}]")
    return float(np.interp(step, x, y))


def curve_auc(record: dict, until: float, start: float = 0.0) -> float:
    """Area under the learning curve from env step ``start`` to ``until``, divided by
    ``until - start``: the mean return over the window, in the return's units.

    The curve is that of :func:`curve_value_at` (piecewise linear between the recorded points,
    the first value held before them); the integral is exact for it (trapezoids on the recorded
    points and on the window's ends).

    Raises:
        ValueError: the window is empty or not inside ``[0, last recorded step]``.
    """
    import numpy as np

    x, y = _defined_curve(record)
    last = record["curve"]["steps"][-1]
    if not 0 <= start < until <= last:
        raise ValueError(f"window [{start}, {until}] is not inside the recorded curve [0, {last}]")
    xs = np.concatenate([[start], x[(x > start) & (x < until)], [until]])
    return float(np.trapezoid(np.interp(xs, x, y), xs) / (until - start))


@dataclass(frozen=True)
class PairedRow:
    """One metric of :func:`paired_table`: the mean over seeds of ``metric(a) - metric(b)``, the
    half-width of its 95% Student-t interval (``nan`` for one seed), the numbers of seeds where
    ``a`` is larger (``wins``) and where both are equal (``ties``), ``n`` and the seeds."""

    metric: str
    mean: float
    half: float
    wins: int
    ties: int
    n: int
    seeds: tuple[int, ...]


def paired_table(
    a: Sequence[dict],
    b: Sequence[dict],
    metrics: dict[str, Any],
    seeds: Sequence[int] | None = None,
) -> list[PairedRow]:
    """Paired differences ``a - b`` of each metric on the same seeds (a run of ``a`` and the run
    of ``b`` with the same seed share their environment seeds and initialisation).

    Args:
        a, b: records of one setting each (one run per seed), on one environment and budget.
        metrics: ``name -> function(record) -> float`` (e.g. ``lambda r: curve_auc(r, 150_000)``).
        seeds: the seeds to compare; each must have a run in ``a`` and in ``b``. ``None``: the
            seeds of ``a``, which must be exactly those of ``b``.

    Raises:
        ValueError: unpaired seeds (a seed of ``seeds``, or of one side when ``seeds`` is
            ``None``, without a run on the other), a seed run twice on one side, no seeds, or
            ``a`` and ``b`` on different environments or budgets.
    """
    from .plotting import paired_difference

    by_seed = []
    for side, recs in (("a", a), ("b", b)):
        d = {}
        for r in recs:
            if r["seed"] in d:
                raise ValueError(f"seed {r['seed']} appears twice in {side}")
            d[r["seed"]] = r
        by_seed.append(d)
    sa, sb = by_seed
    if seeds is None:
        if set(sa) != set(sb):
            raise ValueError(
                f"unpaired seeds: only in a {sorted(set(sa) - set(sb))}, "
                f"only in b {sorted(set(sb) - set(sa))}"
            )
        seeds = sorted(sa)
    seeds = [int(s) for s in seeds]
    missing = sorted({s for s in seeds if s not in sa or s not in sb})
    if missing:
        raise ValueError(f"unpaired seeds: {missing} lack a run in a or in b")
    if not seeds:
        raise ValueError("no seeds to compare")
    for key in ("env_id", "total_steps"):
        values = {r[key] for r in [*(sa[s] for s in seeds), *(sb[s] for s in seeds)]}
        if len(values) > 1:
            raise ValueError(f"a and b mix {key}s {sorted(values)}: compare one setting")
    rows = []
    for name, fn in metrics.items():
        va, vb = [fn(sa[s]) for s in seeds], [fn(sb[s]) for s in seeds]
        mean, half, wins, n = paired_difference(va, vb)
        ties = sum(x == y for x, y in zip(va, vb, strict=True))
        rows.append(PairedRow(name, mean, half if n > 1 else math.nan, wins, ties, n, tuple(seeds)))
    return rows


def diagnostic_quantiles(
    records: Sequence[dict], key: str, until: float | None = None
) -> tuple[float, float, float, int] | None:
    """Quartiles ``(q25, median, q75)`` of a per-update diagnostic (e.g. ``correction_ratio``)
    over every update of every run that records it, and the number of such runs; ``None`` if no
    run records it. ``until``: only the updates up to that env step (the diagnostic's ``i``-th
    value belongs to the curve's ``i``-th step)."""
    import numpy as np

    values, runs = [], 0
    for r in records:
        vals = r.get("diagnostics", {}).get(key)
        if not vals:
            continue
        runs += 1
        steps = r["curve"]["steps"][: len(vals)]
        values += [
            v
            for v, s in zip(vals, steps, strict=True)
            if v is not None and (until is None or s <= until)
        ]
    if not runs:
        return None
    q25, med, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(med), float(q75), runs


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m birl_lite.experiments --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m birl_lite.experiments",
        description="Train actor-critic algorithms x envs x seeds; one resumable JSON per run.",
    )
    parser.add_argument(
        "--algos",
        nargs="+",
        default=["ppo", "blpo-nystrom"],
        help=f"algorithms among {list(ALGOS)}",
    )
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1"], help="gymnasium ids")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=500_000, help="env steps per run")
    parser.add_argument("--out", default="results/blpo", help="output folder")
    parser.add_argument("--rank", type=int, default=None, help="Nystrom rank (default 5)")
    parser.add_argument(
        "--damping", type=float, default=None, help="Nystrom damping nu (default 50)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="other ACConfig fields; they also name the output files",
    )
    add_parallel_arguments(parser)
    args = parser.parse_args(argv)
    overrides = {}
    types = {f.name: f.type for f in fields(ACConfig)}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k not in types:
            parser.error(f"unknown config field {k!r}; known: {sorted(types)}")
        try:
            overrides[k] = _parse_value(v, types[k], k)
        except ValueError as exc:
            parser.error(str(exc))
    if args.rank is not None:
        if args.rank < 1:
            parser.error(f"--rank must be an integer >= 1, got {args.rank}")
        overrides["nystrom_rank"] = args.rank
    if args.damping is not None:
        overrides["nystrom_damping"] = args.damping
    known = {f.name for f in fields(ACConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        parser.error(f"unknown config field(s) {bad}; known: {sorted(known)}")
    try:
        runs = plan_runs(args.algos, args.envs, args.seeds, args.steps, args.out, overrides)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    torch.set_num_threads(1)
    try:
        counts = run_experiment(
            runs, progress=not args.no_progress, workers=args.workers, address=args.address
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{counts['run']} runs trained, {counts['skipped']} already finished, "
        f"{counts['locked']} claimed by another command; results in {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
