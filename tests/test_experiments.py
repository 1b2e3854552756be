"""Tests of the experiment command: resumability, atomic writes, clear errors."""

import json
import os

import pytest

from birl_lite import experiments
from birl_lite.experiments import load_results, main, plan_runs, run_experiment, write_json_atomic

STEPS = 512  # one rollout of 4 envs x 128 steps


def test_resumed_experiment_skips_finished_runs_and_loses_none(tmp_path, monkeypatch):
    runs = plan_runs(["ppo"], ["CartPole-v1"], [0, 1], STEPS, tmp_path)
    assert run_experiment(runs, progress=False) == {"run": 2, "skipped": 0}
    stamps = {r.path: (r.path.stat().st_mtime_ns, r.path.read_bytes()) for r in runs}

    # a third seed, and an interruption during the fourth: finished files survive untouched
    calls = []
    real_train = experiments.train

    def flaky_train(cfg, **kw):
        calls.append(cfg.seed)
        if cfg.seed == 3:
            raise KeyboardInterrupt
        return real_train(cfg, **kw)

    monkeypatch.setattr(experiments, "train", flaky_train)
    more = plan_runs(["ppo"], ["CartPole-v1"], [0, 1, 2, 3], STEPS, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(more, progress=False)
    assert calls == [2, 3]  # seeds 0 and 1 were not redone
    for r in runs:
        assert (r.path.stat().st_mtime_ns, r.path.read_bytes()) == stamps[r.path]
    assert not more[3].path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(r.path.name for r in more[:3])

    # resuming finishes the interrupted run only
    monkeypatch.setattr(experiments, "train", real_train)
    assert run_experiment(more, progress=False) == {"run": 1, "skipped": 3}
    recs = load_results(tmp_path)
    assert [r["seed"] for r in recs] == [0, 1, 2, 3]
    rec = recs[0]
    assert rec["complete"] and rec["config"]["algo"] == "ppo" and rec["total_steps"] == STEPS
    assert rec["curve"]["steps"] == [STEPS] and len(rec["curve"]["wall"]) == 1
    assert len(rec["episodes"]["returns"]) == len(rec["episodes"]["steps"]) > 0
    assert oct(more[0].path.stat().st_mode & 0o777) == "0o644"


def test_partial_file_is_not_a_finished_run(tmp_path):
    runs = plan_runs(["ppo"], ["CartPole-v1"], [0], STEPS, tmp_path)
    runs[0].path.write_text('{"complete": tr')  # a torn write from some other tool
    assert run_experiment(runs, progress=False) == {"run": 1, "skipped": 0}
    assert json.loads(runs[0].path.read_text())["complete"] is True


def test_write_json_atomic_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["x.json"]


def test_plan_is_seed_major_and_names_overrides(tmp_path):
    runs = plan_runs(
        ["ppo", "blpo-nystrom"],
        ["CartPole-v1", "Acrobot-v1"],
        [0, 1],
        1000,
        tmp_path,
        {"nystrom_rank": 10},
    )
    assert [r.config.seed for r in runs] == [0] * 4 + [1] * 4
    assert runs[1].path.name == "CartPole-v1__blpo-nystrom__nystrom_rank=10__seed0.json"
    assert runs[1].config.nystrom_rank == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--envs", "NoSuchEnv-v0"], "unknown environment id 'NoSuchEnv-v0'"),
        (["--algos", "sac"], "unknown algorithm 'sac'"),
        (["--rank", "0"], "--rank must be an integer >= 1"),
        (["--set", "nystrom_rank=0"], "nystrom_rank must be an integer >= 1"),
        (["--set", "lr=1"], "unknown config field"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_runs_and_resumes(tmp_path, capsys):
    argv = [
        "--algos",
        "blpo-nystrom",
        "--envs",
        "CartPole-v1",
        "--seeds",
        "0",
        "--steps",
        str(STEPS),
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "1 runs trained, 0 already finished" in capsys.readouterr().err
    assert main(argv) == 0
    assert "0 runs trained, 1 already finished" in capsys.readouterr().err


def _record(env, algo, seed, finals, wall, file_extra=""):
    return {
        "complete": True,
        "env_id": env,
        "algo": algo,
        "seed": seed,
        "total_steps": 30,
        "final_return": finals[-1],
        "wall_time": wall,
        "file": f"{env}__{algo}{file_extra}__seed{seed}.json",
        "curve": {"steps": [10, 20, 30], "return_last20": finals, "wall": [1, 2, 3]},
    }


def test_summary_table_and_curve_band():
    from birl_lite.experiments import curve_band, group_results, steps_to_threshold, summary_table

    recs = [
        _record("E", "ppo", 0, [None, 1.0, 3.0], 2.0),
        _record("E", "ppo", 1, [None, 3.0, 5.0], 4.0),
        _record("E", "blpo-nystrom", 0, [None, 2.0, 8.0], 9.0, "__nystrom_rank=10"),
    ]
    groups = group_results(recs)
    assert sorted(groups) == [("E", "blpo-nystrom__nystrom_rank=10"), ("E", "ppo")]
    rows = {r["label"]: r for r in summary_table(recs)}
    assert rows["ppo"]["final_mean"] == 4.0 and rows["ppo"]["seeds"] == [0, 1]
    assert rows["ppo"]["final_std"] == pytest.approx(2**0.5)
    assert rows["blpo-nystrom__nystrom_rank=10"]["wall_ratio_to_ppo"] == pytest.approx(3.0)
    band = curve_band(groups[("E", "ppo")])
    assert band.n == 2 and band.mean[2] == 4.0
    assert band.hi[2] - band.mean[2] == pytest.approx(12.706 * 2**0.5 / 2**0.5)
    assert steps_to_threshold(recs[0], 2.5) == 30 and steps_to_threshold(recs[0], 9) is None
