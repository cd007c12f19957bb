"""The meta-gradients are the mathematics they claim to be.

Everything runs in float64 on a tiny MLP body (3 -> 4, ReLU) so an explicit Hessian is cheap.
References never call the code under test: the network, the losses, the head initialisations and
the inner loop are re-written below from their definitions (``ref_*``), flattened to one vector,
and differentiated with ``torch.autograd`` (Hessians with ``torch.autograd.functional.hessian``).

Notation: phi the meta-parameters, z0 the task's starting parameters (phi plus a head), P the 0/1
mask of the adapted coordinates (all, or the head only for ANIL), alpha the inner learning rate.
One inner step z' = z0 - alpha P grad L_s(z0) has Jacobian I - alpha P H_s(z0), so the exact
meta-gradient is  (I - alpha H_s(z0) P) grad L_q(z')  restricted to phi's coordinates.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastadapt.meta_train.algorithms import TaskTensors, meta_gradient
from fastadapt.meta_train.inner_loop import InnerLoop, adapt, forward, init_head, sgd_step
from fastadapt.models.networks import ModelSpec, build_model

HEAD = ("head.weight", "head.bias")
IN, HID = 3, 4
DT = torch.float64


# --------------------------------------------------------------------------- explicit references

def ref_features(p, x):
    return torch.relu(x @ p["layers.0.weight"].t() + p["layers.0.bias"])


def ref_out(p, x):
    return ref_features(p, x) @ p["head.weight"].t() + p["head.bias"]


def ref_loss(p, x, y, loss):
    out = ref_out(p, x)
    if loss == "mse":
        return ((out - y) ** 2).sum() / out.numel()
    logp = out - torch.logsumexp(out, dim=1, keepdim=True)
    return -logp[torch.arange(len(y)), y].sum() / len(y)


def ref_head(p, x, y, ways, head_init):
    """The task's starting parameters from the meta-parameters (a new dict)."""
    z = {k: v for k, v in p.items() if k not in HEAD}
    if head_init == "learned":
        z.update({k: p[k] for k in HEAD})
    elif head_init == "zero":
        z["head.weight"] = torch.zeros(ways, HID, dtype=DT)
        z["head.bias"] = torch.zeros(ways, dtype=DT)
    else:  # prototype: logits = -|f - mu_c|^2 + |f|^2
        f = ref_features(z, x)
        mus = torch.stack([f[y == c].mean(0) for c in range(ways)])
        z["head.weight"] = 2 * mus
        z["head.bias"] = -(mus ** 2).sum(1)
    return z


def ref_adapt(p, x, y, ways, head_init, adapt_what, lr, steps, loss, create_graph=True):
    """Plain SGD on the adapted names. Each step differentiates w.r.t. the current parameters as
    independent variables (one flat vector), not through how they were made (e.g. prototypes)."""
    z = ref_head(p, x, y, ways, head_init)
    fl = Flat(z)
    mask = fl.mask(lambda k: adapt_what == "all" or k in HEAD)
    v = fl.flat(z)
    for _ in range(steps):
        (g,) = torch.autograd.grad(ref_loss(fl.unflat(v), x, y, loss), v, create_graph=create_graph)
        v = v - lr * mask * g
    return fl.unflat(v)


class Flat:
    """A fixed ordering of named tensors <-> one vector."""

    def __init__(self, params):
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.sizes = [params[k].numel() for k in self.names]

    def flat(self, params):
        return torch.cat([params[k].reshape(-1) for k in self.names])

    def unflat(self, v):
        return {k: c.reshape(s) for k, c, s in zip(self.names, torch.split(v, self.sizes), self.shapes)}

    def mask(self, keep):
        return torch.cat([torch.full((n,), float(keep(k)), dtype=DT) for k, n in zip(self.names, self.sizes)])


def grad_vec(fl, z, x, y, loss):
    v = fl.flat(z).detach().requires_grad_()
    return torch.autograd.grad(ref_loss(fl.unflat(v), x, y, loss), v)[0]


def hessian(fl, z, x, y, loss):
    v0 = fl.flat(z).detach()
    return torch.autograd.functional.hessian(lambda v: ref_loss(fl.unflat(v), x, y, loss), v0)


# --------------------------------------------------------------------------- fixtures

def make_model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelSpec(name="mlp", in_features=IN, hidden=(HID,))).double()


def make_meta(model, outputs=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    p = {k: v.detach().clone() for k, v in model.named_parameters()}
    if outputs is not None:  # a learned head
        p["head.weight"] = torch.randn(outputs, HID, generator=g, dtype=DT) * 0.7
        p["head.bias"] = torch.randn(outputs, generator=g, dtype=DT) * 0.3
    return {k: v.requires_grad_() for k, v in p.items()}


def reg_task(seed, n_s=6, n_q=5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(IN, 1, generator=g, dtype=DT)
    xs, xq = torch.randn(n_s, IN, generator=g, dtype=DT), torch.randn(n_q, IN, generator=g, dtype=DT)
    return TaskTensors(xs, torch.sin(xs @ w), xq, torch.sin(xq @ w), 1)


def cls_task(seed, ways=3, shots=2, n_q=6):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ways, IN, generator=g, dtype=DT) * 1.5
    ys = torch.arange(ways).repeat_interleave(shots)
    yq = torch.arange(n_q) % ways
    xs = centres[ys] + 0.8 * torch.randn(len(ys), IN, generator=g, dtype=DT)
    xq = centres[yq] + 0.8 * torch.randn(n_q, IN, generator=g, dtype=DT)
    return TaskTensors(xs, ys, xq, yq, ways)


SETUPS = {  # name -> (loss, head_init, task maker, learned head outputs)
    "regression-learned": ("mse", "learned", reg_task, 1),
    "classification-zero": ("cross_entropy", "zero", cls_task, None),
}


def setup(name, seed=0):
    loss, head_init, task_fn, outputs = SETUPS[name]
    model = make_model()
    return model, make_meta(model, outputs), task_fn(seed), loss, head_init


def as_vec(fl, grads, meta):
    """A meta-gradient dict (meta names only) as a vector over fl's names, 0 outside meta."""
    return torch.cat([grads[k].reshape(-1) if k in meta else torch.zeros(n, dtype=DT)
                      for k, n in zip(fl.names, fl.sizes)])


def close(a, b, atol=1e-9, rtol=1e-7):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"max |diff| {(a - b).abs().max().item():.3g}"


# --------------------------------------------------------------------------- MAML / ANIL: Hessian formula

def _one_step_reference(meta, task, loss, head_init, adapt_what, lr):
    z0 = ref_head({k: v.detach() for k, v in meta.items()}, task.support_x, task.support_y, task.ways,
                  head_init)
    fl = Flat(z0)
    mask = fl.mask(lambda k: adapt_what == "all" or k in HEAD)
    g_s = grad_vec(fl, z0, task.support_x, task.support_y, loss)
    z1 = fl.unflat(fl.flat(z0) - lr * mask * g_s)
    g_q = grad_vec(fl, z1, task.query_x, task.query_y, loss)
    H = hessian(fl, z0, task.support_x, task.support_y, loss)
    in_meta = fl.mask(lambda k: k in meta)
    return fl, H, g_q, mask, in_meta


@pytest.mark.parametrize("name", list(SETUPS))
def test_maml_one_step_is_I_minus_alpha_H_times_query_gradient(name):
    model, meta, task, loss, head_init = setup(name)
    lr = 0.5
    recipe = InnerLoop(steps=1, lr=lr, adapt="all", loss=loss, head_init=head_init)
    grads, _, _ = meta_gradient("maml", model, meta, [task], recipe)

    fl, H, g_q, mask, in_meta = _one_step_reference(meta, task, loss, head_init, "all", lr)
    expected = (torch.eye(len(g_q), dtype=DT) - lr * H @ torch.diag(mask)) @ g_q
    got = as_vec(fl, grads, meta)
    close(got, expected * in_meta, atol=1e-6)
    # the Hessian term is really there (else this would not distinguish MAML from FOMAML)
    assert (lr * H @ g_q * in_meta).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(SETUPS))
def test_anil_one_step_uses_head_columns_of_the_hessian(name):
    """ANIL: z' = (theta, w - alpha grad_w L_s). d/dw = (I - alpha H_ww) g_w and
    d/dtheta = g_theta - alpha H_theta,w g_w: the full Hessian times the head part of g_q."""
    model, meta, task, loss, head_init = setup(name)
    lr = 0.5
    recipe = InnerLoop(steps=1, lr=lr, adapt="head", loss=loss, head_init=head_init)
    grads, _, _ = meta_gradient("anil", model, meta, [task], recipe)

    fl, H, g_q, mask, in_meta = _one_step_reference(meta, task, loss, head_init, "head", lr)
    expected = g_q - lr * H @ (mask * g_q)
    got = as_vec(fl, grads, meta)
    close(got, expected * in_meta, atol=1e-6)
    body = 1 - mask
    # the body's gradient has a non-negligible second-order part through the head's adaptation ...
    assert (lr * H @ (mask * g_q) * body).abs().max() > 1e-3
    # ... and the projection matters: the unrestricted MAML formula would give another answer.
    # (Not with a zero head: there the support loss is flat in the body, H_body,body = 0.)
    if head_init == "learned":
        wrong = g_q - lr * H @ g_q
        assert (wrong * in_meta - got).abs().max() > 1e-3


def test_anil_algorithm_requires_head_only_recipe():
    """'anil' with a recipe that adapts everything would silently be full MAML."""
    model, meta, task, loss, head_init = setup("regression-learned")
    recipe = InnerLoop(steps=1, lr=0.5, adapt="all", loss=loss, head_init=head_init)
    with pytest.raises(ValueError, match="head"):
        meta_gradient("anil", model, meta, [task], recipe)


# --------------------------------------------------------------------------- FOMAML

@pytest.mark.parametrize("adapt_what", ["all", "head"])
@pytest.mark.parametrize("name", list(SETUPS))
def test_fomaml_is_query_gradient_at_adapted_params(name, adapt_what):
    model, meta, task, loss, head_init = setup(name)
    lr, steps = 0.4, 2
    recipe = InnerLoop(steps=steps, lr=lr, adapt=adapt_what, loss=loss, head_init=head_init)
    grads, qloss, _ = meta_gradient("fomaml", model, meta, [task], recipe)

    plain = {k: v.detach().requires_grad_() for k, v in meta.items()}
    z = ref_adapt(plain, task.support_x, task.support_y, task.ways, head_init, adapt_what, lr, steps,
                  loss, create_graph=False)
    z = {k: v.detach() for k, v in z.items()}
    fl = Flat(z)
    g_q = grad_vec(fl, z, task.query_x, task.query_y, loss)
    close(as_vec(fl, grads, meta), g_q * fl.mask(lambda k: k in meta))
    assert qloss == pytest.approx(ref_loss(z, task.query_x, task.query_y, loss).item(), rel=1e-9)


# --------------------------------------------------------------------------- MAML really second order

def _query_loss_after_adapt(meta_vec, fl, task, loss, head_init, lr, steps):
    p = {k: v.clone().requires_grad_() for k, v in fl.unflat(meta_vec).items()}
    with torch.enable_grad():
        z = ref_adapt(p, task.support_x, task.support_y, task.ways, head_init, "all", lr, steps, loss,
                      create_graph=False)
    return ref_loss({k: v.detach() for k, v in z.items()}, task.query_x, task.query_y, loss).item()


@pytest.mark.parametrize("name,head_init", [("regression-learned", "learned"),
                                            ("classification-zero", "zero"),
                                            ("classification-zero", "prototype")])
def test_maml_two_steps_is_second_order_and_matches_finite_differences(name, head_init):
    model, meta, task, loss, _ = setup(name)
    lr, steps = 0.5, 2
    recipe = InnerLoop(steps=steps, lr=lr, adapt="all", loss=loss, head_init=head_init)
    g_maml, _, _ = meta_gradient("maml", model, meta, [task], recipe)
    g_fo, _, _ = meta_gradient("fomaml", model, meta, [task], recipe)

    fl = Flat(meta)
    v_maml, v_fo = fl.flat(g_maml), fl.flat(g_fo)
    assert (v_maml - v_fo).norm() > 0.05 * v_maml.norm()

    v0 = fl.flat(meta).detach()
    h = 1e-6
    for i in torch.linspace(0, len(v0) - 1, 7).round().long().tolist():
        e = torch.zeros_like(v0)
        e[i] = h
        fd = (_query_loss_after_adapt(v0 + e, fl, task, loss, head_init, lr, steps)
              - _query_loss_after_adapt(v0 - e, fl, task, loss, head_init, lr, steps)) / (2 * h)
        assert v_maml[i].item() == pytest.approx(fd, abs=1e-6, rel=1e-5), f"coordinate {i}"


# --------------------------------------------------------------------------- Reptile

@pytest.mark.parametrize("name", list(SETUPS))
def test_reptile_is_sum_of_inner_gradients_on_support_and_query(name):
    model, meta, task, loss, head_init = setup(name)
    lr, k = 0.3, 3
    recipe = InnerLoop(steps=k, lr=lr, adapt="all", loss=loss, head_init=head_init)
    grads, _, _ = meta_gradient("reptile", model, meta, [task], recipe)

    x = torch.cat([task.support_x, task.query_x])
    y = torch.cat([task.support_y, task.query_y])
    z = ref_head({k_: v.detach() for k_, v in meta.items()}, x, y, task.ways, head_init)
    fl = Flat(z)
    v = fl.flat(z)
    total = torch.zeros_like(v)
    for _ in range(k):
        g = grad_vec(fl, fl.unflat(v), x, y, loss)
        total += g
        v = v - lr * g
    close(as_vec(fl, grads, meta), total * fl.mask(lambda n: n in meta))
    # k distinct gradients: not just k times the first one
    first = grad_vec(fl, z, x, y, loss)
    assert (total - k * first).abs().max() > 1e-3


def test_reptile_with_one_step_is_joint_training():
    """g_reptile = (phi - phi_1) / alpha = grad L_t(phi), so phi - eps * mean_t g_reptile is one SGD
    step with lr eps on the mean task loss (lr eps * alpha for the undivided phi + eps (phi_1 - phi))."""
    model = make_model()
    meta = make_meta(model, outputs=1)
    tasks = [reg_task(s) for s in (10, 11, 12)]
    alpha, eps = 0.3, 0.7
    recipe = InnerLoop(steps=1, lr=alpha, adapt="all", loss="mse", head_init="learned")
    grads, _, _ = meta_gradient("reptile", model, meta, tasks, recipe)
    fl = Flat(meta)
    after_reptile = fl.flat(meta).detach() - eps * fl.flat(grads)

    v = fl.flat(meta).detach().requires_grad_()
    joint = sum(ref_loss(fl.unflat(v), torch.cat([t.support_x, t.query_x]),
                         torch.cat([t.support_y, t.query_y]), "mse") for t in tasks) / len(tasks)
    (g,) = torch.autograd.grad(joint, v)
    after_sgd = v.detach() - eps * g
    close(after_reptile, after_sgd, atol=1e-12)
    assert (after_sgd - v.detach()).abs().max() > 1e-3


@pytest.mark.parametrize("iteration", [0, 7])
def test_reptile_outer_step_moves_phi_eps_of_the_way_to_phi_k(iteration):
    """The trainer's Reptile update (outer_optimizer + reptile_step + step) is phi + eps_t (phi_k - phi) with
    eps_t = meta_lr (1 - t / T) (Nichol et al.). Guards an lr that forgets the inner lr alpha (steps 1/alpha
    too large) or is not annealed."""
    from fastadapt.meta_train.algorithms import outer_optimizer, reptile_step

    model, meta, task, loss, head_init = setup("regression-learned")
    alpha, k, eps, iterations = 0.3, 3, 0.5, 10
    recipe = InnerLoop(steps=k, lr=alpha, adapt="all", loss=loss, head_init=head_init)
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    phi = {name: v.detach().clone() for name, v in meta.items()}
    phi_k = {name: v.detach() for name, v in
             ref_adapt(meta, x, y, task.ways, head_init, "all", alpha, k, loss, create_graph=False).items()}
    grads, _, _ = meta_gradient("reptile", model, meta, [task], recipe)
    optimizer = outer_optimizer("reptile", list(meta.values()), eps)
    reptile_step(optimizer, eps, alpha, iteration, iterations)
    for name, v in meta.items():
        v.grad = grads[name]
    optimizer.step()
    e = eps * (1 - iteration / iterations)
    fl = Flat(phi)
    want = fl.flat(phi) + e * (fl.flat(phi_k) - fl.flat(phi))
    close(fl.flat({name: v.detach() for name, v in meta.items()}), want, atol=1e-12)
    assert (want - fl.flat(phi)).abs().max() > 1e-3  # the step is not negligible


# --------------------------------------------------------------------------- batch average

@pytest.mark.parametrize("algorithm,adapt_what", [("maml", "all"), ("fomaml", "all"),
                                                  ("reptile", "all"), ("anil", "head")])
def test_meta_gradient_is_mean_over_tasks(algorithm, adapt_what):
    model = make_model()
    meta = make_meta(model)
    recipe = InnerLoop(steps=2, lr=0.4, adapt=adapt_what, loss="cross_entropy", head_init="zero")
    t1, t2 = cls_task(3), cls_task(4, ways=2)
    both, loss_b, acc_b = meta_gradient(algorithm, model, meta, [t1, t2], recipe)
    one, loss_1, acc_1 = meta_gradient(algorithm, model, meta, [t1], recipe)
    two, loss_2, acc_2 = meta_gradient(algorithm, model, meta, [t2], recipe)
    assert set(both) == set(meta)
    for k in meta:
        close(both[k], (one[k] + two[k]) / 2, atol=1e-12)
    assert max((one[k] - two[k]).abs().max().item() for k in meta) > 1e-3  # the tasks differ
    assert loss_b == pytest.approx((loss_1 + loss_2) / 2)
    assert acc_b == pytest.approx((acc_1 + acc_2) / 2)


# --------------------------------------------------------------------------- head initialisations

def test_zero_head_gives_uniform_predictions_before_any_step():
    model = make_model()
    meta = make_meta(model)
    task = cls_task(5, ways=4, shots=2)
    recipe = InnerLoop(steps=0, loss="cross_entropy", head_init="zero")
    params = adapt(model, meta, task.support_x, task.support_y, task.ways, recipe)
    probs = torch.softmax(forward(model, params, task.query_x), 1)
    assert probs.shape == (len(task.query_x), 4)
    close(probs, torch.full_like(probs, 0.25), atol=1e-15)
    # and the cross-entropy is exactly log(ways)
    loss = torch.nn.functional.cross_entropy(forward(model, params, task.query_x), task.query_y)
    assert loss.item() == pytest.approx(math.log(4), rel=1e-12)


@pytest.mark.parametrize("adapt_what", ["all", "head"])
def test_shared_row_head_adapts_exactly_like_zero_head(adapt_what):
    model = make_model()
    meta = make_meta(model)
    task = cls_task(6, ways=3, shots=2)
    k, lr = 3, 0.5
    recipe = InnerLoop(steps=k, lr=lr, adapt=adapt_what, loss="cross_entropy", head_init="zero")
    zero = adapt(model, meta, task.support_x, task.support_y, task.ways, recipe)

    g = torch.Generator().manual_seed(7)
    row, b = torch.randn(HID, generator=g, dtype=DT) * 2, torch.randn((), generator=g, dtype=DT)
    shared = {kk: v for kk, v in meta.items() if kk not in HEAD}
    shared["head.weight"] = row.repeat(task.ways, 1)
    shared["head.bias"] = b.repeat(task.ways)
    for _ in range(k):
        shared = sgd_step(model, shared, task.support_x, task.support_y, recipe, lr)

    p_zero = torch.softmax(forward(model, zero, task.query_x), 1)
    p_shared = torch.softmax(forward(model, shared, task.query_x), 1)
    close(p_shared, p_zero, atol=1e-12)
    # the shared row survives every step: the heads differ by exactly (row, b) in each row ...
    close(shared["head.weight"] - zero["head.weight"], row.expand(task.ways, HID), atol=1e-12)
    close(shared["head.bias"] - zero["head.bias"], b.expand(task.ways), atol=1e-12)
    # ... and adaptation did something (the predictions are no longer uniform)
    assert (p_zero - 1 / task.ways).abs().max() > 1e-2


def test_prototype_head_is_nearest_class_mean_before_any_step():
    model = make_model()
    meta = make_meta(model)
    task = cls_task(8, ways=3, shots=3, n_q=9)
    recipe = InnerLoop(steps=0, loss="cross_entropy", head_init="prototype")
    params = init_head(model, meta, task.support_x, task.support_y, task.ways, recipe)
    logits = forward(model, params, task.query_x)

    plain = {kk: v.detach() for kk, v in meta.items()}
    fs, fq = ref_features(plain, task.support_x), ref_features(plain, task.query_x)
    means = torch.stack([fs[task.support_y == c].mean(0) for c in range(task.ways)])
    d2 = ((fq[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    close(torch.softmax(logits, 1), torch.softmax(-d2, 1), atol=1e-12)
    assert torch.equal(logits.argmax(1), d2.argmin(1))
    # logits are -d^2 up to a per-query constant, |f|^2
    close(logits + d2, (fq ** 2).sum(1, keepdim=True).expand_as(d2), atol=1e-12)
    assert len(set(d2.argmin(1).tolist())) > 1  # not a degenerate single-class answer


# --------------------------------------------------------------------------- vectorised = per-task loop

def conv_tasks(n, ways=3, shots=2, n_q=4, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys, yq = torch.arange(ways).repeat_interleave(shots), torch.arange(n_q) % ways
    return [TaskTensors(torch.rand(len(ys), 1, side, side, generator=g, dtype=DT), ys,
                  torch.rand(n_q, 1, side, side, generator=g, dtype=DT), yq, ways) for _ in range(n)]


def conv_meta(norm):
    torch.manual_seed(0)
    model = build_model(ModelSpec(image_size=16, width=4, norm=norm)).double()
    with torch.no_grad():  # non-trivial norm affine parameters
        for k, v in model.named_parameters():
            if v.dim() == 1:
                v.add_(0.3 * torch.randn_like(v))
    return model, {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}


def assert_same_results(a, b, rel=1e-9):
    (ga, la, aa), (gb, lb, ab) = a, b
    assert set(ga) == set(gb)
    for k in ga:
        scale = max(gb[k].abs().max().item(), 1e-3)
        assert (ga[k] - gb[k]).abs().max().item() <= rel * scale, k
    assert la == pytest.approx(lb, rel=rel)
    assert aa == pytest.approx(ab, rel=rel, abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("norm", ["instance", "layer"])
@pytest.mark.parametrize("head_init", ["zero", "prototype"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile", "anil"])
def test_batched_tasks_equal_per_task_loop(one_thread, algorithm, head_init, norm, monkeypatch):
    import fastadapt.meta_train.algorithms as alg

    model, meta = conv_meta(norm)
    tasks = conv_tasks(3)
    recipe = InnerLoop(steps=2, lr=0.4, adapt="head" if algorithm == "anil" else "all", head_init=head_init)
    loop = meta_gradient(algorithm, model, meta, tasks, recipe, vectorize=False)
    monkeypatch.setattr(alg, "_meta_gradient_loop", None)  # the vectorised path really runs
    vec = meta_gradient(algorithm, model, meta, tasks, recipe, vectorize=True)
    assert_same_results(vec, loop)
    assert max(g.abs().max().item() for g in loop[0].values()) > 1e-3


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_batched_equals_loop_for_regression_with_learned_head(algorithm, one_thread):
    model = make_model()
    meta = make_meta(model, outputs=1)
    tasks = [reg_task(s) for s in (20, 21, 22, 23)]
    recipe = InnerLoop(steps=3, lr=0.3, adapt="all", loss="mse", head_init="learned")
    vec = meta_gradient(algorithm, model, meta, tasks, recipe, vectorize=True)
    loop = meta_gradient(algorithm, model, meta, tasks, recipe, vectorize=False)
    assert_same_results(vec, loop)
    assert math.isnan(vec[2]) and math.isnan(loop[2])


def test_ragged_batch_falls_back_to_the_loop(one_thread, monkeypatch):
    import fastadapt.meta_train.algorithms as alg

    model = make_model()
    meta = make_meta(model)
    recipe = InnerLoop(steps=2, lr=0.4, head_init="zero")
    tasks = [cls_task(3), cls_task(4, ways=2)]
    expected = meta_gradient("maml", model, meta, tasks, recipe, vectorize=False)
    monkeypatch.setattr(alg, "_meta_gradient_batched", None)
    assert_same_results(meta_gradient("maml", model, meta, tasks, recipe, vectorize=True), expected, rel=0)


def test_batch_stats_norm_is_batched_for_every_algorithm(one_thread, monkeypatch):
    """Batch statistics per task (each task's channels normalised over its own images), second order
    included: torch.func.vmap got MAML's gradient through F.batch_norm wrong; plain autograd does not."""
    import fastadapt.meta_train.algorithms as alg

    model, meta = conv_meta("batch")
    tasks = conv_tasks(2)
    recipe = InnerLoop(steps=2, lr=0.4, head_init="zero")
    expected = {a: meta_gradient(a, model, meta, tasks, recipe, vectorize=False) for a in ("maml", "fomaml")}
    monkeypatch.setattr(alg, "_meta_gradient_loop", None)
    for algorithm, loop in expected.items():
        assert_same_results(meta_gradient(algorithm, model, meta, tasks, recipe, vectorize=True), loop)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile", "anil"])
def test_worker_threads_equal_the_loop_and_restore_torch_threads(algorithm):
    model, meta = conv_meta("instance")
    tasks = conv_tasks(5)  # uneven chunks over 2 workers
    recipe = InnerLoop(steps=2, lr=0.4, adapt="head" if algorithm == "anil" else "all", head_init="prototype")
    loop = meta_gradient(algorithm, model, meta, tasks, recipe)
    before = torch.get_num_threads()
    threaded = meta_gradient(algorithm, model, meta, tasks, recipe, workers=2)
    assert torch.get_num_threads() == before
    assert_same_results(threaded, loop)
    assert max(g.abs().max().item() for g in loop[0].values()) > 1e-3
