"""The hand-derived derivatives of birl_lite.actor_critic.derivatives against autograd, and the
BLPO update direction built on them against an autograd implementation of the same steps."""

import pytest
import torch

from birl_lite.actor_critic import make_config, make_vector_env
from birl_lite.actor_critic.blpo import blpo_direction, clip_correction, differentiable_gae
from birl_lite.actor_critic.derivatives import (
    MSEHessian,
    mlp_forward,
    mlp_jvp,
    mlp_vjp,
    mse_grad,
    policy_log_prob,
    policy_vjp,
)
from birl_lite.actor_critic.networks import Actor, Critic
from birl_lite.actor_critic.ppo import (
    clipped_surrogate,
    critic_loss,
    normalize,
    step_flat,
    surrogate_partials,
)
from birl_lite.actor_critic.rollout import RolloutCollector, discount_matrix
from birl_lite.actor_critic.training import _build
from birl_lite.ihvp import ihvp_cg, ihvp_nystrom, make_hvp


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_mlp_forward_and_vjp_match_autograd(critic64):
    critic, x, _, gen = critic64
    acts = mlp_forward(critic.net, x)
    torch.testing.assert_close(acts.y.squeeze(-1), critic(x).detach(), rtol=1e-14, atol=1e-15)
    dy = torch.randn(3, 30, 1, generator=gen, dtype=torch.float64)
    got = mlp_vjp(acts, dy)
    for b in range(3):
        ref = _flat(torch.autograd.grad((critic(x) * dy[b, :, 0]).sum(), critic.parameters()))
        torch.testing.assert_close(got[b], ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(mlp_vjp(acts, dy[0]), got[0])


def test_forward_reads_the_parameters_live_and_outside_autograd(critic64):
    """mlp_forward works on detached views of the parameters: an in-place optimizer step shows
    through (no stale copy), and nothing it returns is tracked by autograd, even with grad on."""
    critic, x, targets, _ = critic64
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    (critic(x) - targets).square().mean().backward()
    opt.step()  # in place
    with torch.enable_grad():
        acts = mlp_forward(critic.net, x)
        g = mse_grad(acts, targets)
    torch.testing.assert_close(acts.y.squeeze(-1), critic(x).detach(), rtol=1e-14, atol=1e-15)
    assert not acts.y.requires_grad and not g.requires_grad
    assert acts.layers[1].weight.data_ptr() == critic.net[2].weight.data_ptr()


def test_mse_grad_matches_autograd(critic64):
    critic, x, targets, _ = critic64
    ref = _flat(torch.autograd.grad(critic_loss(critic(x), targets), critic.parameters()))
    got = mse_grad(mlp_forward(critic.net, x), targets)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13)


def test_mlp_jvp_matches_torch_func(critic64):
    critic, x, _, gen = critic64
    params = {k: p.detach() for k, p in critic.named_parameters()}
    hvp = make_hvp(lambda p: torch.func.functional_call(critic, p, (x,)).sum(), params)
    u = torch.randn(hvp.dim, generator=gen, dtype=torch.float64)
    _, ref = torch.func.jvp(
        lambda p: torch.func.functional_call(critic, p, (x,)), (params,), (hvp.unflatten(u),)
    )
    got = mlp_jvp(mlp_forward(critic.net, x), u)
    torch.testing.assert_close(got.squeeze(-1), ref, rtol=1e-12, atol=1e-13)


def test_mse_hessian_is_exact(critic64):
    critic, x, targets, gen = critic64
    params = {k: p.detach() for k, p in critic.named_parameters()}
    hvp = make_hvp(
        lambda p: critic_loss(torch.func.functional_call(critic, p, (x,)), targets), params
    )
    H = MSEHessian(critic.net, x, targets)
    assert H.dim == hvp.dim
    V = torch.randn(hvp.dim, 4, generator=gen, dtype=torch.float64)
    HV = H.matmat(V)
    for j in range(4):
        ref = hvp(V[:, j])
        torch.testing.assert_close(HV[:, j], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(H(V[:, j]), ref, rtol=1e-12, atol=1e-12)
    assert H.n_hvp == 8
    # not Gauss-Newton: the residual term matters away from a perfect fit
    fit = critic(x).detach()
    gn = MSEHessian(critic.net, x, fit)(V[:, 0])  # zero residual: J^T J only
    assert float((gn - HV[:, 0]).norm()) > 1e-3 * float(HV[:, 0].norm())
    assert list(H.unflatten(V[:, 0])) == [k.removeprefix("net.") for k in params]


def test_nystrom_batched_columns_equal_one_by_one(critic64):
    critic, x, targets, gen = critic64
    H = MSEHessian(critic.net, x, targets)
    v = torch.randn(H.dim, generator=gen, dtype=torch.float64)
    batched = ihvp_nystrom(H, v, rank=7, damping=0.5, generator=torch.Generator().manual_seed(3))
    looped = ihvp_nystrom(
        lambda z: H(z), v, rank=7, damping=0.5, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(batched.u, looped.u, rtol=1e-10, atol=1e-12)
    assert batched.n_hvp == looped.n_hvp == 7


@pytest.mark.parametrize("discrete", [True, False])
def test_policy_log_prob_and_vjp_match_autograd(discrete):
    gen = torch.Generator().manual_seed(1)
    actor = Actor(3, 2, discrete, 8, gen, log_std_init=-0.3).double()
    obs = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    if discrete:
        actions = torch.randint(0, 2, (11,), generator=gen)
    else:
        actions = torch.randn(11, 2, generator=gen, dtype=torch.float64)
    acts = mlp_forward(actor.net, obs)
    logp = actor.log_prob(obs, actions)
    torch.testing.assert_close(policy_log_prob(actor, acts, actions), logp.detach())
    w = torch.randn(2, 11, generator=gen, dtype=torch.float64)
    got = policy_vjp(actor, acts, actions, w)
    for b in range(2):
        ref = _flat(torch.autograd.grad((logp * w[b]).sum(), actor.parameters(), retain_graph=True))
        torch.testing.assert_close(got[b], ref, rtol=1e-12, atol=1e-13)


def _autograd_direction(state, mb, cfg, solver, rank, damping):
    """The BLPO direction (steps 2-5) written with autograd: the reference for the fast code."""
    actor, critic = state.actor, state.critic
    obs, returns = mb["obs"], mb["returns"]
    v_all = critic(torch.cat([obs, mb["next_obs"]]))
    T = obs.shape[0]
    adv = differentiable_gae(
        v_all[:T], v_all[T:], mb["rewards"], mb["terminated"], mb["gae_matrix"], cfg.gamma
    )
    adv = normalize(adv)
    ratio = torch.exp(actor.log_prob(obs, mb["actions"]) - mb["old_logp"])
    J = clipped_surrogate(ratio, adv, cfg.clip_coef)
    params_a, params_c = list(actor.parameters()), list(critic.parameters())
    grads = torch.autograd.grad(J, params_a + params_c, retain_graph=True)
    g_theta, g_w = _flat(grads[: len(params_a)]), _flat(grads[len(params_a) :])
    params = {k: p.detach() for k, p in critic.named_parameters()}
    hvp = make_hvp(
        lambda p: critic_loss(torch.func.functional_call(critic, p, (obs,)), returns), params
    )
    if solver == "nystrom":
        u = ihvp_nystrom(hvp, g_w, rank=rank, damping=damping, generator=state.gen).u
    else:
        u = ihvp_cg(hvp, g_w, max_iter=rank, damping=damping, tol=1e-10).u
    _, dv = torch.func.jvp(
        lambda p: torch.func.functional_call(critic, p, (obs,)), (params,), (hvp.unflatten(u),)
    )
    q = 2.0 * (critic(obs).detach() - returns) * dv
    causal = torch.einsum("etu,ue->te", mb["causal_matrix"], q)
    c_raw = _flat(torch.autograd.grad((ratio * causal).mean(), params_a))
    c, _ = clip_correction(c_raw, g_theta, cfg.correction_bound)
    return g_theta, g_w, u, c_raw, g_theta - c


@pytest.mark.parametrize(
    ("env_id", "solver", "rank", "damping"),
    [
        ("CartPole-v1", "nystrom", 5, 50.0),
        ("CartPole-v1", "cg", 10, 1.0),
        ("Pendulum-v1", "nystrom", 20, 1.0),
    ],
)
def test_blpo_direction_matches_autograd(env_id, solver, rank, damping):
    cfg = make_config("blpo-nystrom", env_id, seed=0, hidden=16)
    envs = make_vector_env(cfg.env_id, cfg.num_envs)
    state = _build(cfg, envs)
    state.actor.double()
    state.critic.double()
    col = RolloutCollector(envs, state.actor, seed=0, gamma=cfg.gamma)
    ro = col.collect(64)
    envs.close()
    mb = {
        "obs": torch.from_numpy(ro.obs).double(),
        "next_obs": torch.from_numpy(ro.next_obs).double(),
        "actions": torch.from_numpy(ro.actions),
        "rewards": torch.from_numpy(ro.rewards).double(),
        "terminated": torch.from_numpy(ro.terminated).double(),
        "gae_matrix": torch.from_numpy(discount_matrix(ro.dones, 0.99 * 0.95)).double(),
        "causal_matrix": torch.from_numpy(discount_matrix(ro.dones, 1.0, strict=True)).double(),
    }
    if not state.actor.discrete:
        mb["actions"] = mb["actions"].double()
    with torch.no_grad():
        mb["returns"] = state.critic(mb["obs"]) + 1.0 + mb["rewards"]
        # an old policy a little away from the current one, so that some ratios are clipped
        logp = state.actor.log_prob(mb["obs"], mb["actions"])
        noise = torch.randn(
            logp.shape, generator=torch.Generator().manual_seed(5), dtype=logp.dtype
        )
        mb["old_logp"] = logp + 0.3 * noise
    state.gen.manual_seed(11)
    d = blpo_direction(state, mb, cfg, solver=solver, rank=rank, damping=damping)
    state.gen.manual_seed(11)
    ref = _autograd_direction(state, mb, cfg, solver, rank, damping)
    for got, want in zip((d.g_theta, d.g_w, d.u, d.correction_raw, d.direction), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert d.n_hvp == rank


def test_hessian_columns_equal_dense_products(critic64):
    critic, x, targets, gen = critic64
    H = MSEHessian(critic.net, x, targets)
    # one column of every parameter block (W0, b0, W1, b1, W2, b2), and a random set
    sizes = [p.numel() for p in critic.parameters()]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    blocks = torch.tensor([s + sz // 2 for s, sz in zip(starts, sizes, strict=True)] + [0])
    for K in (blocks, torch.randperm(H.dim, generator=gen)[:9], torch.arange(H.dim)):
        E = torch.zeros(H.dim, len(K), dtype=torch.float64)
        E[K, torch.arange(len(K))] = 1.0
        torch.testing.assert_close(H.columns(K), H.matmat(E), rtol=1e-12, atol=1e-13)


def test_surrogate_partials_match_autograd():
    gen = torch.Generator().manual_seed(2)
    ratio = (1.0 + 0.4 * torch.randn(50, generator=gen, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(50, generator=gen, dtype=torch.float64).requires_grad_()
    J = clipped_surrogate(ratio, adv, 0.2)
    d_ratio, d_adv = torch.autograd.grad(J, (ratio, adv))
    got_ratio, got_adv = surrogate_partials(ratio.detach(), adv.detach(), 0.2)
    clipped = ((ratio - 1.0).abs() > 0.2).sum()
    assert 0 < int(clipped) < 50  # both branches are exercised
    torch.testing.assert_close(got_ratio, d_ratio, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(got_adv, d_adv, rtol=1e-14, atol=1e-15)


def test_step_flat_equals_clip_grad_norm_and_step():
    from birl_lite.actor_critic.ppo import step

    for max_norm in (1e-3, 1e3):  # clipped and not clipped
        nets = [torch.nn.Linear(3, 2).double() for _ in range(2)]
        nets[1].load_state_dict(nets[0].state_dict())
        opts = [torch.optim.Adam(n.parameters(), lr=0.1) for n in nets]
        flat = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        params0 = list(nets[0].parameters())
        offset = 0
        for p in params0:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        step(opts[0], params0, max_norm)
        step_flat(opts[1], list(nets[1].parameters()), flat, max_norm)
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_train_accepts_a_custom_update_and_rejects_a_non_callable():
    from birl_lite.actor_critic import train

    calls = []

    def counting_update(state, mb, cfg):
        calls.append(mb["obs"].shape)
        return {}

    cfg = make_config("ppo", "CartPole-v1", total_steps=512, seed=0)
    train(cfg, update=counting_update)
    assert len(calls) == cfg.update_epochs * cfg.num_minibatches
    with pytest.raises(TypeError, match="update must be callable"):
        train(cfg, update="ppo")


def _rollout_minibatch(cfg, steps=64):
    """A float64 state and one minibatch ``[T, E, ...]`` of ``cfg``'s env, old policy perturbed."""
    envs = make_vector_env(cfg.env_id, cfg.num_envs)
    state = _build(cfg, envs)
    state.actor.double()
    state.critic.double()
    col = RolloutCollector(envs, state.actor, seed=0, gamma=cfg.gamma)
    ro = col.collect(steps)
    envs.close()
    mb = {
        "obs": torch.from_numpy(ro.obs).double(),
        "next_obs": torch.from_numpy(ro.next_obs).double(),
        "actions": torch.from_numpy(ro.actions),
        "rewards": torch.from_numpy(ro.rewards).double(),
        "terminated": torch.from_numpy(ro.terminated).double(),
        "gae_matrix": torch.from_numpy(discount_matrix(ro.dones, 0.99 * 0.95)).double(),
        "causal_matrix": torch.from_numpy(discount_matrix(ro.dones, 1.0, strict=True)).double(),
    }
    with torch.no_grad():
        mb["returns"] = state.critic(mb["obs"]) + 1.0 + mb["rewards"]
        logp = state.actor.log_prob(mb["obs"], mb["actions"])
        noise = torch.randn(
            logp.shape, generator=torch.Generator().manual_seed(5), dtype=logp.dtype
        )
        mb["old_logp"] = logp + 0.3 * noise
    return state, mb


@pytest.mark.parametrize("norm_adv", [True, False])
def test_authors_mixed_term_matches_autograd_of_their_f2(norm_adv):
    """``mixed_term="authors"``: the correction is grad_theta (grad_w f2 . u) with the authors'
    f2 = 2 sum_t ratio_t A_t(w) (V_w(s_t) - G_t), by double autograd (A normalized with constant
    statistics when norm_adv), and differs from the book's estimator."""
    cfg = make_config("blpo-cg", "CartPole-v1", seed=0, hidden=16, norm_adv=norm_adv)
    auth = make_config(
        "blpo-cg", "CartPole-v1", seed=0, hidden=16, norm_adv=norm_adv, mixed_term="authors"
    )
    state, mb = _rollout_minibatch(cfg)
    d = blpo_direction(state, mb, auth, rank=10, damping=1.0)
    book = blpo_direction(state, mb, cfg, rank=10, damping=1.0)
    torch.testing.assert_close(d.u, book.u, rtol=0, atol=0)  # only step 4 differs
    actor, critic = state.actor, state.critic
    obs, T = mb["obs"], mb["obs"].shape[0]
    params_a, params_c = list(actor.parameters()), list(critic.parameters())
    v_all = critic(torch.cat([obs, mb["next_obs"]]))
    adv = differentiable_gae(
        v_all[:T], v_all[T:], mb["rewards"], mb["terminated"], mb["gae_matrix"], cfg.gamma
    )
    if norm_adv:
        adv = normalize(adv)
    ratio = torch.exp(actor.log_prob(obs, mb["actions"]) - mb["old_logp"])
    f2 = 2.0 * (ratio * adv * (v_all[:T] - mb["returns"])).sum()
    grad_w = torch.autograd.grad(f2, params_c, create_graph=True)
    c_ref = _flat(torch.autograd.grad(_flat(grad_w) @ d.u, params_a))
    torch.testing.assert_close(d.correction_raw, c_ref, rtol=1e-9, atol=1e-11)
    assert float((d.correction_raw - book.correction_raw).norm()) > 0.1 * float(
        book.correction_raw.norm()
    )


def test_fixed_nystrom_indices_are_drawn_once_per_run():
    fresh = make_config("blpo-nystrom", "CartPole-v1", seed=0, hidden=16)
    fixed = make_config("blpo-nystrom", "CartPole-v1", seed=0, hidden=16, nystrom_indices="fixed")
    state, mb = _rollout_minibatch(fresh)
    us = [blpo_direction(state, mb, fixed).u for _ in range(2)]
    torch.testing.assert_close(us[0], us[1], rtol=0, atol=0)  # same columns every update
    gen_state = state.gen.get_state()
    blpo_direction(state, mb, fixed)
    assert torch.equal(state.gen.get_state(), gen_state)  # the run's generator is not used
    u_fresh = [blpo_direction(state, mb, fresh).u for _ in range(2)]
    assert not torch.equal(u_fresh[0], u_fresh[1])  # fresh indices: new columns each call
    # the fixed columns are those of ihvp_nystrom with these explicit indices
    hvp = MSEHessian(state.critic.net, mb["obs"].reshape(-1, 4), mb["returns"].reshape(-1))
    K = state.fixed_nystrom_perm[: fixed.nystrom_rank]
    u_ref = ihvp_nystrom(hvp, blpo_direction(state, mb, fixed).g_w, rank=5, damping=50.0, indices=K)
    torch.testing.assert_close(us[0], u_ref.u, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- speedups (issue 14): bit for bit


def _columns_one_by_one(H, K):
    """``MSEHessian.columns`` as first written (zero matrices filled column by column and the
    blocks concatenated at the end), the reference for the stacked version."""
    a = H.acts
    _, l1, l2 = a.layers
    (n, Hd), d = a.h1.shape, a.x.shape[1]
    K = K.tolist()
    k = len(K)
    W1, w2 = l1.weight, l2.weight[0]
    sizes = [Hd * d, Hd, Hd * Hd, Hd, Hd, 1]
    starts = [sum(sizes[:i]) for i in range(6)]
    alpha, beta, delta = (a.x.new_zeros(n, k) for _ in range(3))
    gamma = a.x.new_zeros(k, Hd)
    layer0, weight1, weight2 = [], [], []
    for c, j in enumerate(K):
        kind = max(i for i in range(6) if j >= starts[i])
        r = j - starts[kind]
        if kind <= 1:
            unit = r // d if kind == 0 else r
            alpha[:, c] = H.s1[:, unit] * (a.x[:, r % d] if kind == 0 else 1.0)
            beta[:, c] = alpha[:, c]
            gamma[c] = W1[:, unit]
            layer0.append((c, unit))
        elif kind <= 3:
            unit = r // Hd if kind == 2 else r
            beta[:, c] = a.h1[:, r % Hd] if kind == 2 else 1.0
            gamma[c, unit] = 1.0
            if kind == 2:
                weight1.append((c, unit, r % Hd))
        else:
            delta[:, c] = a.h2[:, r] if kind == 4 else 1.0
            if kind == 4:
                weight2.append((c, r))
    dh2 = beta.T.unsqueeze(2) * gamma.unsqueeze(1) * H.s2
    dy = beta * (H.s2 @ (gamma * w2).T) + delta
    de = (2.0 / n) * dy
    gW2 = de.T @ a.h2 + ((H.e * beta).T @ H.s2) * gamma
    gb2 = de.sum(0)
    dd2 = (de.T.unsqueeze(2) * (w2 * H.s2)).addcmul_(H.c2, dh2)
    for c, b in weight2:
        dd2[c, :, b] += H.e[:, 0] * H.s2[:, b]
    gW1 = dd2.transpose(1, 2) @ a.h1
    for c, unit in layer0:
        gW1[c, :, unit] += H.d2.T @ alpha[:, c]
    gb1 = dd2.sum(1)
    dd1 = (dd2.reshape(k * n, Hd) @ W1).view(k, n, Hd)
    for c, unit, b in weight1:
        dd1[c, :, b] += H.d2[:, unit]
    dd1.mul_(H.s1)
    for c, unit in layer0:
        dd1[c, :, unit] += H.c1[:, unit] * alpha[:, c]
    gW0 = (a.x.T @ dd1).transpose(1, 2)
    gb0 = dd1.sum(1)
    parts = (gW0, gb0, gW1, gb1, gW2.unsqueeze(1), gb2.unsqueeze(1))
    return torch.cat([p.reshape(k, -1) for p in parts], dim=1).T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_paths_equal_the_straightforward_code_bit_for_bit(dtype):
    """The stacked Hessian columns, the backward pass written into slices (``out=``) and the
    cached tanh slopes give exactly the numbers of the straightforward code."""
    gen = torch.Generator().manual_seed(3)
    critic = Critic(4, 64, gen).to(dtype)
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=dtype))
    x = 2.0 * torch.randn(128, 4, generator=gen, dtype=dtype)
    targets = 5.0 * torch.randn(128, generator=gen, dtype=dtype)
    H = MSEHessian(critic.net, x, targets)
    sizes = [p.numel() for p in critic.parameters()]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    every_block = torch.tensor([s + z // 2 for s, z in zip(starts, sizes, strict=True)] + [0])
    draws = [torch.randperm(H.dim, generator=gen)[:5] for _ in range(40)]
    for K in [every_block, *draws]:
        assert torch.equal(H.columns(K), _columns_one_by_one(H, K))
    acts = mlp_forward(critic.net, x)
    dy = torch.randn(128, 1, generator=gen, dtype=dtype)
    h1, h2 = acts.h1, acts.h2
    _, l1, l2 = acts.layers
    d2 = (dy @ l2.weight) * (1.0 - h2 * h2)
    d1 = (d2 @ l1.weight) * (1.0 - h1 * h1)
    parts = (d1.T @ x, d1.sum(0), d2.T @ h1, d2.sum(0), dy.T @ h2, dy.sum(0))
    want = torch.cat([p.reshape(-1) for p in parts])
    assert torch.equal(mlp_vjp(acts, dy), want)
    buf = torch.full((H.dim,), float("nan"), dtype=dtype)
    assert mlp_vjp(acts, dy, buf) is buf and torch.equal(buf, want)
    with pytest.raises(ValueError, match="single product"):
        mlp_vjp(acts, dy.unsqueeze(0), buf)
    assert torch.equal(acts.rows(7).s1, (1.0 - h1 * h1)[:7])  # the cached slopes follow rows()


def test_adam_step_flat_is_optimizer_step_bit_for_bit():
    """The direct fused-Adam call of adam_step_flat and step_flat (Optimizer.step) agree exactly
    over several steps (the first one creates the state), with and without clipping and with a
    learning rate changed between steps; other optimizers take Optimizer.step."""
    from birl_lite.actor_critic.blpo import _lean_adam_state, adam_step_flat

    gen = torch.Generator().manual_seed(4)
    for max_norm in (0.5, None):
        nets = [Critic(4, 64, torch.Generator().manual_seed(1)) for _ in range(2)]
        params = [list(n.parameters()) for n in nets]
        opts = [torch.optim.Adam(p, lr=1e-3, eps=1e-5, fused=True) for p in params]
        for i in range(5):
            flat = torch.randn(sum(p.numel() for p in params[0]), generator=gen)
            for opt in opts:
                opt.param_groups[0]["lr"] = 1e-3 * (1.0 - i / 5)
            step_flat(opts[0], params[0], flat, max_norm)
            adam_step_flat(opts[1], params[1], flat, max_norm)
            assert _lean_adam_state(opts[1], params[1]) is not None  # state exists now
            for a, b in zip(params[0], params[1], strict=True):
                assert torch.equal(a, b)
        for a, b in zip(opts[0].state.values(), opts[1].state.values(), strict=True):
            assert all(torch.equal(a[key], b[key]) for key in ("step", "exp_avg", "exp_avg_sq"))
    net = torch.nn.Linear(3, 2)
    plain = torch.optim.Adam(net.parameters(), lr=0.1)  # not fused: the general path
    adam_step_flat(plain, list(net.parameters()), torch.ones(8), None)
    assert _lean_adam_state(plain, list(net.parameters())) is None
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.weight.detach().clone()
    adam_step_flat(sgd, list(net.parameters()), torch.ones(8), None)
    assert torch.equal(net.weight, before - 0.1)
