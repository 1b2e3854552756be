"""Tests of the experiment command: resumability, atomic writes, clear errors."""

import json
import math
import os

import pytest

from birl_lite import experiments
from birl_lite.experiments import load_results, main, plan_runs, run_experiment, write_json_atomic

STEPS = 512  # one rollout of 4 envs x 128 steps


def test_resumed_experiment_skips_finished_runs_and_loses_none(tmp_path, monkeypatch):
    runs = plan_runs(["ppo"], ["CartPole-v1"], [0, 1], STEPS, tmp_path)
    assert run_experiment(runs, progress=False) == {"run": 2, "skipped": 0, "locked": 0}
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
    assert run_experiment(more, progress=False) == {"run": 1, "skipped": 3, "locked": 0}
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
    with pytest.warns(RuntimeWarning, match="corrupted"):
        assert run_experiment(runs, progress=False) == {"run": 1, "skipped": 0, "locked": 0}
    assert json.loads(runs[0].path.read_text())["complete"] is True
    # reported and kept aside, not silently overwritten
    assert (tmp_path / (runs[0].path.name + ".corrupt")).read_text() == '{"complete": tr'


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
    assert runs[1].path.name == "CartPole-v1__blpo-nystrom__nystrom_rank=10__steps1000__seed0.json"
    assert runs[1].config.nystrom_rank == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--envs", "NoSuchEnv-v0"], "unknown environment id 'NoSuchEnv-v0'"),
        (["--algos", "sac"], "unknown algorithm 'sac'"),
        (["--rank", "0"], "--rank must be an integer >= 1"),
        (["--set", "nystrom_rank=0"], "nystrom_rank must be an integer >= 1"),
        (["--set", "lr=1"], "unknown config field"),
        (["--workers", "0"], "--workers: expected an integer >= 1, got '0'"),
        (["--workers", "two"], "--workers: expected an integer >= 1, got 'two'"),
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
        "file": f"{env}__{algo}{file_extra}__steps30__seed{seed}.json",
        "config": {"algo": algo, "env_id": env, "seed": seed, "total_steps": 30},
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
    # CPU time: NaN unless every record of both groups has one
    assert all(math.isnan(r["cpu_ratio_to_ppo"]) for r in rows.values())
    for r, cpu in zip(recs, (1.0, 3.0, 4.0), strict=True):
        r["cpu_time"] = cpu
    rows = {r["label"]: r for r in summary_table(recs)}
    assert rows["ppo"]["cpu_mean"] == 2.0
    assert rows["blpo-nystrom__nystrom_rank=10"]["cpu_ratio_to_ppo"] == pytest.approx(2.0)
    del recs[1]["cpu_time"]
    assert math.isnan(summary_table(recs)[0]["cpu_ratio_to_ppo"])
    band = curve_band(groups[("E", "ppo")])
    assert band.n == 2 and band.mean[2] == 4.0
    assert band.hi[2] - band.mean[2] == pytest.approx(12.706 * 2**0.5 / 2**0.5)
    assert steps_to_threshold(recs[0], 2.5) == 30 and steps_to_threshold(recs[0], 9) is None


def test_curve_value_and_area_interpolate_the_recorded_curve():
    from birl_lite.experiments import curve_auc, curve_value_at

    rec = _record("E", "ppo", 0, [None, 1.0, 3.0], 2.0)  # steps 10, 20, 30; no episode by 10
    assert curve_value_at(rec, 0) == 1.0 and curve_value_at(rec, 15) == 1.0  # first value held
    assert curve_value_at(rec, 25) == 2.0 and curve_value_at(rec, 30) == 3.0
    # [0, 20]: 1.0 held (area 20); [20, 30]: trapezoid (1 + 3) / 2 * 10 = 20; 40 / 30
    assert curve_auc(rec, 30) == pytest.approx(4 / 3)
    # [15, 20]: 5; [20, 25]: (1 + 2) / 2 * 5 = 7.5; 12.5 / 10
    assert curve_auc(rec, 25, start=15) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="outside the recorded curve"):
        curve_value_at(rec, 31)
    with pytest.raises(ValueError, match="not inside the recorded curve"):
        curve_auc(rec, 40)
    with pytest.raises(ValueError, match="no finished episode"):
        curve_value_at(_record("E", "ppo", 0, [None, None, None], 2.0), 20)


def test_paired_table_matches_seeds_and_refuses_unpaired_ones():
    from birl_lite.experiments import paired_table

    a = [_record("E", "x", 0, [None, 1.0, 3.0], 1.0), _record("E", "x", 1, [None, 3.0, 5.0], 1.0)]
    b = [_record("E", "y", 1, [None, 2.0, 8.0], 1.0), _record("E", "y", 0, [None, 2.0, 2.0], 1.0)]
    final = {"final": lambda r: r["final_return"]}
    (row,) = paired_table(a, b, final)
    # seed 0: 3 - 2 = 1, seed 1: 5 - 8 = -3 (b listed in another order)
    assert (row.metric, row.mean, row.wins, row.ties, row.n) == ("final", -1.0, 1, 0, 2)
    assert row.seeds == (0, 1)
    assert row.half == pytest.approx(12.706 * 8**0.5 / 2**0.5)  # t * std / sqrt(n), std = sqrt(8)
    # unpaired seeds are refused, not dropped
    b2 = [b[1], _record("E", "y", 2, [None, 2.0, 2.0], 1.0)]
    with pytest.raises(ValueError, match=r"unpaired seeds: only in a \[1\], only in b \[2\]"):
        paired_table(a, b2, final)
    with pytest.raises(ValueError, match=r"unpaired seeds: \[1\]"):
        paired_table(a, b2, final, seeds=[0, 1])
    (one,) = paired_table(a, b2, final, seeds=[0])  # an explicit common seed is fine
    assert one.mean == 1.0 and one.n == 1 and one.half != one.half  # nan: no interval
    (tie,) = paired_table(a, b, {"at 20": lambda r: r["curve"]["return_last20"][1] // 2})
    assert (tie.wins, tie.ties, tie.mean) == (0, 1, -0.5)  # 0 vs 1, 1 vs 1
    with pytest.raises(ValueError, match="appears twice"):
        paired_table(a + a[:1], b, final)
    with pytest.raises(ValueError, match="mix env_ids"):
        paired_table(a, [_record("F", "y", s, [None, 1.0, 1.0], 1.0) for s in (0, 1)], final)


def test_diagnostic_quantiles_pool_updates_and_seeds():
    from birl_lite.experiments import diagnostic_quantiles

    r0, r1 = (_record("E", "x", s, [None, 1.0, 3.0], 1.0) for s in (0, 1))
    r0["diagnostics"] = {"correction_ratio": [1.0, None, 3.0]}
    r1["diagnostics"] = {"correction_ratio": [5.0, 7.0, 9.0]}
    assert diagnostic_quantiles([r0, r1], "correction_ratio") == (3.0, 5.0, 7.0, 2)
    early = diagnostic_quantiles([r0, r1], "correction_ratio", until=20)  # 1, 5, 7
    assert early[1] == 5.0 and early[3] == 2
    assert diagnostic_quantiles([r0, r1], "correction_cos") is None


# ---------------------------------------------------------------------------------------------
# Reliability: the name identifies the run, the folder is checked first, overrides are typed,
# locks, strict JSON, no side effects of train() on torch's global state
# ---------------------------------------------------------------------------------------------


def test_another_budget_is_another_run_and_a_changed_config_is_refused(tmp_path, monkeypatch):
    short = plan_runs(["ppo"], ["CartPole-v1"], [0], STEPS, tmp_path)
    longer = plan_runs(["ppo"], ["CartPole-v1"], [0], 2 * STEPS, tmp_path)
    assert short[0].path != longer[0].path
    assert run_experiment(short, progress=False)["run"] == 1
    # the same name with another configuration (e.g. changed defaults) stops the command
    record = json.loads(short[0].path.read_text())
    record["config"]["critic_lr"] = 0.5
    short[0].path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"another configuration .*critic_lr"):
        run_experiment(short, progress=False)


def test_unwritable_output_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the folder should be")
    calls = []
    monkeypatch.setattr(experiments, "train", lambda cfg, **kw: calls.append(cfg))
    runs = plan_runs(["ppo"], ["CartPole-v1"], [0], STEPS, blocker)
    with pytest.raises(OSError, match="cannot write results"):
        run_experiment(runs, progress=False)
    assert calls == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("anneal_lr=maybe", "expected true/false"),
        ("log_std_init=nan", "expected a finite number"),
        ("hidden=1.5", "expected an integer"),
    ],
)
def test_cli_overrides_are_typed(tmp_path, capsys, item, message):
    with pytest.raises(SystemExit):
        main(["--set", item, "--out", str(tmp_path), "--no-progress"])
    assert message in capsys.readouterr().err


def test_cli_boolean_words(tmp_path, monkeypatch):
    seen = []
    counts = {"run": 0, "skipped": 0, "locked": 0}
    monkeypatch.setattr(
        experiments, "run_experiment", lambda runs, **kw: seen.extend(runs) or counts
    )
    main(["--set", "anneal_lr=no", "--out", str(tmp_path), "--no-progress", "--algos", "ppo"])
    assert seen and seen[0].config.anneal_lr is False


def test_config_rejects_wrong_types_and_non_finite_values():
    from birl_lite.actor_critic.config import make_config

    with pytest.raises(TypeError, match="anneal_lr must be a bool"):
        make_config("ppo", "CartPole-v1", anneal_lr="no")
    with pytest.raises(ValueError, match="log_std_init must be finite"):
        make_config("ppo", "Pendulum-v1", log_std_init=float("nan"))


def test_locks_share_work_and_stale_locks_are_taken_over(tmp_path, monkeypatch):
    runs = plan_runs(["ppo"], ["CartPole-v1"], [0, 1], STEPS, tmp_path)
    # seed 0 is claimed by a live process (this one): it is left to that process
    live = runs[0].path.with_name(runs[0].path.name + ".lock")
    import socket

    live.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    # seed 1 carries the lock of a dead process: it is taken over
    dead = runs[1].path.with_name(runs[1].path.name + ".lock")
    dead.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345}))
    counts = run_experiment(runs, progress=False)
    assert counts == {"run": 1, "skipped": 0, "locked": 1}
    assert not runs[0].path.exists() and runs[1].path.exists()
    assert live.exists() and not dead.exists()


def test_write_json_atomic_is_strict(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"a": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_group_results_refuses_mixed_budgets():
    from birl_lite.experiments import group_results

    a = _record("E", "ppo", 0, [1.0, 2.0, 3.0], 1.0)
    b = _record("E", "ppo", 1, [1.0, 2.0, 3.0], 1.0)
    b["config"]["total_steps"] = 60
    with pytest.raises(ValueError, match="mix configurations"):
        group_results([a, b])


def test_train_leaves_torch_global_state_alone():
    import torch

    from birl_lite.actor_critic import train
    from birl_lite.actor_critic.config import make_config

    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(make_config("ppo", "CartPole-v1", total_steps=STEPS, seed=7), threads=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_cpu_time_is_recorded_and_does_not_count_waiting(tmp_path, monkeypatch):
    """The results file records the run's CPU time beside its wall time; a run that waits (here a
    callback that sleeps 0.3 s after each of its two rollouts, as a paused or starved run would)
    has its wall time grow and its CPU time not."""
    import time

    real_train = experiments.train

    def waiting_train(cfg, **kw):
        inner = kw.pop("callback")

        def callback(step, result):
            inner(step, result)
            time.sleep(0.3)

        return real_train(cfg, callback=callback, **kw)

    monkeypatch.setattr(experiments, "train", waiting_train)
    runs = plan_runs(["ppo"], ["CartPole-v1"], [0], 2 * STEPS, tmp_path)
    assert run_experiment(runs, progress=False) == {"run": 1, "skipped": 0, "locked": 0}
    rec = load_results(tmp_path)[0]
    assert 0 < rec["cpu_time"] and rec["wall_time"] >= rec["cpu_time"] + 0.5, rec


def test_parallel_runs_on_ray_match_sequential_runs_and_write_nothing_home(tmp_path, monkeypatch):
    """Two runs on a local Ray instance (2 workers): the same records as sequential training, and
    no file under the home folder (Ray writes an auth token there by default)."""
    pytest.importorskip("ray")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    seq = plan_runs(["ppo"], ["CartPole-v1"], [0, 1], STEPS, tmp_path / "seq")
    par = plan_runs(["ppo"], ["CartPole-v1"], [0, 1], STEPS, tmp_path / "par")
    assert run_experiment(seq, progress=False) == {"run": 2, "skipped": 0, "locked": 0}
    assert run_experiment(par, progress=False, workers=2) == {"run": 2, "skipped": 0, "locked": 0}
    for a, b in zip(load_results(tmp_path / "seq"), load_results(tmp_path / "par"), strict=True):
        assert a["episodes"] == b["episodes"] and a["config"] == b["config"]
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert written == [], written
    # resumable in parallel too
    assert run_experiment(par, progress=False, workers=2) == {"run": 0, "skipped": 2, "locked": 0}


def test_controls_are_refused_where_they_mean_nothing():
    from birl_lite.actor_critic.config import make_config

    with pytest.raises(ValueError, match="needs a correction"):
        make_config("ppo-nested", "CartPole-v1", correction_control="random")
    with pytest.raises(ValueError, match="ppo_critic_steps applies to algo='ppo' only"):
        make_config("blpo-nystrom", "CartPole-v1", ppo_critic_steps=3)


def test_an_empty_lock_left_by_a_crash_is_taken_over_once_old(tmp_path):
    runs = plan_runs(["ppo"], ["CartPole-v1"], [0], STEPS, tmp_path)
    lock = runs[0].path.with_name(runs[0].path.name + ".lock")
    lock.write_text("")  # created, never written: the process died in between
    os.utime(lock, (0, 0))
    assert run_experiment(runs, progress=False) == {"run": 1, "skipped": 0, "locked": 0}


def test_parse_seeds_ranges_and_lists():
    from birl_lite.experiments import parse_seeds

    assert parse_seeds(["0-3"]) == [0, 1, 2, 3]
    assert parse_seeds(["5", "7-8"]) == [5, 7, 8]


def test_per_seed_ratios_pair_by_seed_and_skip_missing_fields():
    from birl_lite.experiments import per_seed_ratios

    base = [{"seed": 0, "wall_time": 10.0}, {"seed": 1, "wall_time": 20.0, "cpu_time": 8.0}]
    recs = [{"seed": 1, "wall_time": 30.0, "cpu_time": 12.0}, {"seed": 0, "wall_time": 15.0}]
    assert per_seed_ratios(recs, base, "wall_time") == [1.5, 1.5]  # paired by seed, not position
    assert per_seed_ratios(recs, base, "cpu_time") == [1.5, None]
    with pytest.raises(ValueError, match=r"seed\(s\) \[2\]"):
        per_seed_ratios([{"seed": 2, "wall_time": 1.0}], base, "wall_time")
