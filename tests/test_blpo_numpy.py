"""The numpy backend of the nested algorithms' update (birl_lite.actor_critic.blpo_numpy) against
the torch path: every derivative in float64 to rounding, whole float32 updates to float32
rounding, the config's checks, learning and determinism."""

import copy

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from birl_lite.actor_critic import make_config, make_vector_env, train
from birl_lite.actor_critic.blpo import blpo_direction, blpo_update
from birl_lite.actor_critic.blpo_numpy import (
    NumpyMSEHessian,
    blpo_direction_numpy,
    blpo_update_numpy,
    clip_grad_norm_numpy,
    numpy_forward,
    numpy_layers,
)
from birl_lite.actor_critic.derivatives import (
    MSEHessian,
    mlp_forward,
    mlp_jvp,
    mlp_vjp,
    mse_grad,
)
from birl_lite.actor_critic.rollout import RolloutCollector
from birl_lite.actor_critic.training import _build, minibatch, prepare_batch, split_segments


def test_forward_vjp_jvp_and_hessian_equal_the_torch_formulas(critic64):
    critic, x, targets, gen = critic64
    acts = mlp_forward(critic.net, x)
    nacts = numpy_forward(numpy_layers(critic.net), x.numpy())
    np.testing.assert_allclose(nacts.y, acts.y.numpy(), rtol=1e-14, atol=1e-15)
    dy = torch.randn(3, 30, 1, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(nacts.vjp(dy.numpy()), mlp_vjp(acts, dy).numpy(), rtol=1e-12)
    np.testing.assert_allclose(nacts.vjp(dy[0].numpy()), mlp_vjp(acts, dy[0]).numpy(), rtol=1e-12)
    e = (2.0 / 30) * (nacts.y - targets.numpy()[:, None])
    np.testing.assert_allclose(nacts.vjp(e), mse_grad(acts, targets).numpy(), rtol=1e-12)
    P = nacts.dim
    V = torch.randn(4, P, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(nacts.jvp(V.numpy()), mlp_jvp(acts, V).numpy(), rtol=1e-11)
    np.testing.assert_allclose(nacts.jvp(V[0].numpy()), mlp_jvp(acts, V[0]).numpy(), rtol=1e-11)
    H, nH = MSEHessian(critic.net, x, targets), NumpyMSEHessian(nacts, targets.numpy())
    np.testing.assert_allclose(
        nH.hvp_batch(V.numpy()), H.hvp_batch(V).numpy(), rtol=1e-10, atol=1e-13
    )
    # columns in every one of the six parameter blocks (W0, b0, W1, b1, W2, b2): the first and
    # last index of each
    ends = np.cumsum([p.numel() for p in critic.parameters()]).tolist()
    K = sorted(
        {i for start, end in zip([0, *ends[:-1]], ends, strict=True) for i in (start, end - 1)}
    )
    np.testing.assert_allclose(
        nH.columns(K), H.columns(torch.tensor(K)).numpy(), rtol=1e-10, atol=1e-13
    )
    # and both equal H e_j
    E = np.zeros((len(K), P))
    E[np.arange(len(K)), K] = 1.0
    np.testing.assert_allclose(nH.columns(K), nH.hvp_batch(E).T, rtol=1e-10, atol=1e-13)


def _setup(algo, env_id, **kw):
    """A config (hidden 16), a rollout's minibatches and a builder of identical fresh states."""
    cfg = make_config(algo, env_id, seed=0, hidden=16, **kw)
    envs = make_vector_env(cfg.env_id, cfg.num_envs)
    state = _build(cfg, envs)
    ro = RolloutCollector(envs, state.actor, seed=0, gamma=cfg.gamma).collect(cfg.num_steps)
    envs.close()
    if cfg.minibatch == "segments":
        batch = prepare_batch(state, ro, cfg)
    else:
        batch = prepare_batch(state, ro, cfg, matrices=False)
        batch = split_segments(batch, cfg.segment_length, cfg)
    per = cfg.batch_size // cfg.segment_length // cfg.num_minibatches
    mbs = [
        minibatch(batch, torch.arange(j * per, (j + 1) * per)) for j in range(cfg.num_minibatches)
    ]
    return cfg, mbs, state


GRID = [
    ("ppo-nested", "CartPole-v1", {}),
    ("blpo-nystrom", "CartPole-v1", {}),
    ("blpo-cg", "CartPole-v1", {}),
    ("blpo-nystrom", "CartPole-v1", {"mixed_term": "authors", "nystrom_indices": "fixed"}),
    ("blpo-nystrom", "CartPole-v1", {"correction_control": "random", "correction_bound": 0.2}),
    ("blpo-nystrom", "Pendulum-v1", {"minibatch": "chunks"}),
    ("blpo-cg", "Pendulum-v1", {"mixed_term": "authors", "norm_adv": False}),
]


@pytest.mark.parametrize(("algo", "env_id", "kw"), GRID)
def test_direction_equals_the_torch_direction_in_float64(algo, env_id, kw):
    """Every field of the direction (g_theta, g_w, u, the raw and clipped correction, the
    direction) to 1e-9 in float64: a dropped term or factor would show."""
    cfg, mbs, state = _setup(algo, env_id, **kw)
    state.actor.double()
    state.critic.double()
    mb = {k: v.double() if v.is_floating_point() else v for k, v in mbs[1].items()}
    twin = copy.deepcopy(state)
    for s in (state, twin):
        s.gen.manual_seed(3)
    want = blpo_direction(state, mb, cfg)
    got = blpo_direction_numpy(twin, mb, cfg)
    for name in ("g_theta", "g_w", "u", "correction_raw", "correction", "direction"):
        w, g = getattr(want, name), getattr(got, name)
        if w is None:
            assert g is None, name
            continue
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12 * float(w.abs().max()), msg=name)
    assert got.scale == pytest.approx(want.scale, rel=1e-9)
    assert got.n_hvp == want.n_hvp
    if algo != "ppo-nested":  # the correction is not negligible, so the check sees it
        assert float(want.correction_raw.norm()) > 1e-3 * float(want.g_theta.norm())


@pytest.mark.parametrize(("algo", "env_id", "kw"), GRID[:2] + GRID[5:6])
def test_float32_updates_follow_the_torch_updates(algo, env_id, kw):
    """Eight whole float32 updates (nesting, direction, Adam steps) from the same networks: the
    parameters agree to float32 rounding (1e-4 of their scale) and so do the diagnostics."""
    cfg, mbs, state = _setup(algo, env_id, **kw)
    twin = copy.deepcopy(state)
    for i in range(8):
        a = blpo_update(state, mbs[i % len(mbs)], cfg)
        b = blpo_update_numpy(twin, mbs[i % len(mbs)], cfg)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-6), k
    for p, q in zip(
        [*state.actor_params, *state.critic_params],
        [*twin.actor_params, *twin.critic_params],
        strict=True,
    ):
        p, q = p.detach(), q.detach()
        assert float((p - q).abs().max()) <= 1e-4 * float(p.abs().max())
    # the control: the networks moved much more than that
    fresh = _setup(algo, env_id, **kw)[2]
    assert float((fresh.critic_params[0] - state.critic_params[0]).detach().abs().max()) > 1e-3


def test_clip_grad_norm_numpy_is_adam_step_flats_clipping():
    """The numpy clipping equals the torch path's formula (adam_step_flat) to float32 rounding:
    long gradients scaled to ``max_norm``, short ones and ``max_norm=None`` left alone; the norm
    does not overflow in float32."""
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1.0, 10.0):
        g = (scale * rng.standard_normal(4545)).astype(np.float32)
        t = torch.from_numpy(g)
        want = (t * (0.5 / (t.norm() + 1e-6)).clamp(max=1.0)).numpy()
        got = clip_grad_norm_numpy(g, 0.5)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert clip_grad_norm_numpy(g, None) is g
    huge = np.full(100, 1e30, dtype=np.float32)  # ||huge||^2 = 1e62 overflows float32
    assert np.linalg.norm(clip_grad_norm_numpy(huge, 0.5).astype(np.float64)) == pytest.approx(0.5)


def test_config_checks_the_backend():
    assert make_config("blpo-nystrom", "CartPole-v1", backend="numpy").backend == "numpy"
    with pytest.raises(ValueError, match="backend"):
        make_config("blpo-nystrom", "CartPole-v1", backend="jax")
    with pytest.raises(ValueError, match="backend='numpy' applies to the nested"):
        make_config("ppo", "CartPole-v1", backend="numpy")
    with pytest.raises(ValueError, match="ent_coef must be 0"):
        make_config("blpo-nystrom", "CartPole-v1", backend="numpy", ent_coef=0.01)


def test_numpy_runs_are_deterministic_and_match_torch_runs_early_on():
    """Same seed, same numbers; and a 4k-step run follows the torch backend's (the same episodes
    up to float32 rounding of the returns' averages)."""
    cfg = make_config("blpo-nystrom", "CartPole-v1", total_steps=4096, seed=1, backend="numpy")
    a, b = train(cfg), train(cfg)
    assert a.episode_returns == b.episode_returns and a.diagnostics == b.diagnostics
    t = train(make_config("blpo-nystrom", "CartPole-v1", total_steps=4096, seed=1))
    assert len(t.episode_returns) == len(a.episode_returns)
    np.testing.assert_allclose(
        a.diagnostics["correction_ratio"], t.diagnostics["correction_ratio"], rtol=1e-3
    )


def test_train_limits_and_restores_numpy_blas_threads():
    """With backend="numpy", numpy's BLAS runs on ``threads`` (1) threads during the run, and
    the caller's setting (2 here) is back afterwards."""

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    seen = []
    cfg = make_config("ppo-nested", "CartPole-v1", total_steps=512, backend="numpy")
    with threadpool_limits(limits=2, user_api="blas"):
        assert set(blas_threads()) == {2}
        train(cfg, callback=lambda step, res: seen.append(blas_threads()))
        assert set(blas_threads()) == {2}
    assert seen and all(set(s) == {1} for s in seen)


def test_a_nan_in_the_critic_is_reported():
    cfg, mbs, state = _setup("blpo-nystrom", "CartPole-v1")
    with torch.no_grad():
        state.critic.net[2].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        blpo_direction_numpy(state, mbs[0], cfg)


@pytest.mark.parametrize("flip", [False, True], ids=["correct", "flipped"])
def test_blpo_nystrom_numpy_learns_cartpole_and_a_flip_fails(flip):
    """As tests/test_learning.py: 16k steps of blpo-nystrom with the numpy backend clear 60
    (torch backend: 87 on seed 0); with the actor's step reflected the run stays below 20."""
    cfg = make_config("blpo-nystrom", "CartPole-v1", total_steps=16_384, seed=0, backend="numpy")

    def flipped(state, mb, cfg):
        before = [p.detach().clone() for p in state.actor_params]
        info = blpo_update_numpy(state, mb, cfg)
        with torch.no_grad():
            for p, b in zip(state.actor_params, before, strict=True):
                p.copy_(2.0 * b - p)
        return info

    res = train(cfg, update=flipped if flip else None)
    if flip:
        assert res.final_return < 20.0, res.final_return
    else:
        assert res.final_return > 60.0, res.final_return
