"""Run actor-critic algorithms x environments x seeds into one JSON file per run (resumable).

Example (the committed results of chapter 9)::

    python -m birl_lite.experiments --algos ppo ppo-nested blpo-cg blpo-nystrom \\
        --envs CartPole-v1 Acrobot-v1 --seeds 0 1 2 3 4 --steps 500000 --out results/blpo

Each run writes ``<out>/<env_id>__<algo>[__<overrides>]__seed<seed>.json`` atomically (a
temporary file in the same folder, then ``os.replace``), holding the configuration, the learning
curve (env steps, mean of the last 20 episode returns, wall time after every rollout), every
completed training episode (env steps, return), the final return (mean of the last 20 training
episodes) and the wall time. A run whose file exists is skipped, so an interrupted command is
resumed by running it again: finished runs are kept, the interrupted one starts over. Runs are
ordered seed-major (seed 0 of every env and algorithm first) so that partial results are useful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from .actor_critic.config import ALGOS, ACConfig, make_config
from .actor_critic.training import train
from .plotting import confidence_band

__all__ = [
    "CurveBand",
    "Run",
    "curve_band",
    "group_results",
    "load_results",
    "main",
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


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
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
                name = f"{env_id}__{algo}{_suffix(overrides)}__seed{seed}.json"
                runs.append(Run(cfg, out / name))
    return runs


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace`` (a reader sees the old file or the complete new one, never a partial one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_finished(path: Path) -> bool:
    try:
        with open(path) as f:
            return bool(json.load(f).get("complete"))
    except (OSError, ValueError):
        return False


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
        "final_return": res.final_return,
        "wall_time": res.wall_time,
        "curve": {
            "steps": res.curve_steps,
            "return_last20": [None if r != r else round(r, 3) for r in res.curve_return],
            "wall": [round(w, 3) for w in res.curve_wall],
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


def run_experiment(runs: Sequence[Run], *, progress: bool = True) -> dict[str, int]:
    """Run every run whose results file is missing; returns counts ``{"run", "skipped"}``."""
    from tqdm.auto import tqdm

    todo = [r for r in runs if not _is_finished(r.path)]
    counts = {"run": 0, "skipped": len(runs) - len(todo)}
    outer = tqdm(
        total=len(runs), initial=counts["skipped"], desc="runs", disable=not progress, position=0
    )
    try:
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
                run_one(run, inner)
            finally:
                inner.close()
            counts["run"] += 1
            outer.update(1)
    finally:
        outer.close()
    return counts


def load_results(folder: str | os.PathLike) -> list[dict]:
    """Every finished results file of ``folder`` (sorted by env, algo, overrides, seed)."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            with open(p) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if rec.get("complete"):
            rec["file"] = p.name
            out.append(rec)
    return out


def run_label(record: dict) -> str:
    """``algo`` plus the overrides that name the file (``blpo-nystrom__nystrom_rank=10``)."""
    name = record.get("file", "")
    parts = name.removesuffix(".json").split("__")
    return "__".join(parts[1:-1]) if len(parts) >= 3 else record["algo"]


def group_results(records: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """Records grouped by ``(env_id, run_label)``, seeds in increasing order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["env_id"], run_label(rec)), []).append(rec)
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
    the same env (when ``ppo`` has results there)."""
    import numpy as np

    groups = group_results(records)
    rows = []
    for (env, label), recs in sorted(groups.items()):
        finals = np.array([r["final_return"] for r in recs], dtype=float)
        walls = np.array([r["wall_time"] for r in recs], dtype=float)
        ppo = groups.get((env, "ppo"))
        ppo_wall = float(np.mean([r["wall_time"] for r in ppo])) if ppo else float("nan")
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
            }
        )
    return rows


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
        "--damping", type=float, default=None, help="Nystrom damping lambda (default 50)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="other ACConfig fields; they also name the output files",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = _parse_value(v)
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
    counts = run_experiment(runs, progress=not args.no_progress)
    print(
        f"{counts['run']} runs trained, {counts['skipped']} already finished, "
        f"results in {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
