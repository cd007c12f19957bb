"""The on-device inner loop: k SGD steps through step.onnx, safeguarded, and ``steps="auto"``.

``run_steps`` is the one definition. Without the safeguard it is the meta-trained recipe exactly:
k steps p <- p - lr * grad L(p) on the support set's cross-entropy L. With it (the default), every
step must not raise L; if one does, adaptation returns to its start (0 steps: the head initialised
from the shots) and says so:

- step.onnx returns L at its INPUT parameters, so the step from p_t is judged by the next step's call
  at p_{t+1}, which is needed anyway, and the last step by one forward pass: in-domain (nothing
  rejected) the safeguard costs one forward pass over the support set, and the result is bit-for-bit
  the recipe's. A change smaller than the float32 precision of L (``_loss_resolution``,
  ``rounding_bound``) is not a rise.
- Why back to the start rather than retrying the step at a smaller learning rate: a step that raises
  the support loss means the shots are unlike the tasks the recipe was meta-trained on, and there
  smaller steps, though they lower the support loss, made query accuracy worse as often as better. On
  the six real-image sets of ``python -m benchmarks --only real`` (10 episodes each), retrying at up to
  4 halvings scored -3.7, -0.8, -0.7, +1.0, +3.2, +0.5 points against 0 steps; returning to the
  start: 0.0, 0.0, -0.2, 0.0, 0.0, 0.0 (0 steps was the better of 0 steps and the recipe on all six).
  So adaptation never ends with a higher support loss than it started with, and never does worse
  than no step where the recipe's steps misbehave.
- Except with a zero-initialised head (``head_init: zero``): its start gives every image the same answer,
  so a rejected step keeps the steps before it (``keep_kept_steps``), and a model whose first step is
  rejected (or that is asked for 0 steps) is an error, never a saved model (``check_zero_head``).

``choose_steps`` picks the number of steps 0..k by leave-one-shot-out on the support set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import FastadaptError

AUTO_FOLDS = 2  # held-out shot positions tried by steps="auto" (each costs about one adaptation)
EPS32 = float(np.finfo(np.float32).eps)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def _sample_weights(labels: np.ndarray, class_balanced: bool) -> np.ndarray:
    """Each image's weight in the support loss: 1/B (the mean), or 1/(classes * images of its class)."""
    if not class_balanced:
        return np.full(len(labels), 1.0 / len(labels))
    classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (len(classes) * counts[index])


def _is_unbalanced(labels: np.ndarray) -> bool:
    return len(set(np.bincount(labels)[np.unique(labels)].tolist())) > 1


def support_loss(logits: np.ndarray, labels: np.ndarray, class_balanced: bool = False) -> float:
    """Cross-entropy (float64) of float32 logits, averaged as Graphs.step does: what it returns as loss."""
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    per_image = np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels]
    return float(np.sum(_sample_weights(labels, class_balanced) * per_image))


def _loss_resolution(ways: int) -> float:
    """The precision of step.onnx's float32 loss: CE_i = log(sum_j exp(z_ij - m_i)) + m_i - z_iy sums
    ``ways`` terms >= 1 in float32 (relative error <= (ways - 1) eps), so its log is off by up to
    ways * eps absolutely (a confident sample's 1 + 1e-8 is 1: its loss is 0). Loss changes below this
    cannot be told from rounding: such a step is not "raising the loss"."""
    return ways * EPS32


def rounding_bound(logits: np.ndarray, features: np.ndarray, params: dict, labels: np.ndarray,
                   class_balanced: bool = False) -> float:
    """How far ``support_loss`` of forward.onnx's logits may lie from step.onnx's loss for the same params.

    The two graphs compute the same logits z_ij = w_j . f_i + b_j with different float32 roundings.
    A D-term float32 dot product errs by about sqrt(D) * eps * (|w_j| |f_i| + |b_j|) (random-walk
    rounding), and a logit error moves CE_i by at most 2 (1 - p_iy) times it (dCE_i/dz_j = p_ij - [j = y_i]);
    plus step.onnx's own ``_loss_resolution``.
    """
    w = params["head.weight"].astype(np.float64)
    b = np.abs(params["head.bias"].astype(np.float64))
    scale = (np.linalg.norm(features.astype(np.float64), axis=1)[:, None] * np.linalg.norm(w, axis=1)[None, :]
             + b[None, :]).max(1)
    miss = 1.0 - softmax(logits)[np.arange(len(labels)), labels]
    per_image = 2.0 * miss * math.sqrt(w.shape[1]) * EPS32 * scale
    return float(np.sum(_sample_weights(labels, class_balanced) * per_image)) + _loss_resolution(len(w))


def _finite(params: dict) -> bool:
    return all(np.isfinite(v).all() for v in params.values())


@dataclass
class _Trajectory:
    params: dict  # the adapted parameters
    losses: list  # support loss at the start and after each kept step
    lrs: list = field(default_factory=list)  # learning rate of each kept step
    rejected: dict | None = None  # the step that raised the loss: {"step", "loss_before", "loss_after"}
    class_balanced: bool = False  # the loss was the class-balanced one (unbalanced shots, safeguard on)

    def report(self, steps: int, safeguard: bool) -> dict:
        # a step's lr: one number, or (learned rates) a list of one per adapted tensor
        lrs = [np.asarray(x, dtype=np.float64).tolist() for x in self.lrs]
        info = {"steps": len(self.lrs), "steps_requested": int(steps), "lrs": lrs,
                "loss_before": round(self.losses[0], 8), "loss_after": round(self.losses[-1], 8),
                "losses": [round(x, 8) for x in self.losses[1:]], "rejected": int(self.rejected is not None),
                "safeguard": bool(safeguard), "class_balanced": self.class_balanced}
        if self.rejected is not None:
            info["rejected_step"] = {k: (round(float(v), 8) if isinstance(v, float) and math.isfinite(v) else
                                         (str(v) if isinstance(v, float) else v)) for k, v in self.rejected.items()}
        return info


def step_rate(lr, step: int):
    """The rate(s) of step ``step`` (0-based): one ``lr`` for every step, or row ``step`` of a learned
    (steps, tensors) matrix (its last row beyond the steps meta-trained), as the trainer's inner loop."""
    if isinstance(lr, np.ndarray) and lr.ndim == 2:
        return lr[min(step, len(lr) - 1)]
    return lr


def run_steps(graphs, images: np.ndarray, labels: np.ndarray, params: dict, steps: int, lr,
              safeguard: bool = True, progress: Callable[[int, int], None] | None = None,
              visit: Callable[[int, dict], None] | None = None, keep_kept_steps: bool = False) -> _Trajectory:
    """``steps`` SGD steps from ``params`` (see the module docstring). ``visit(kept, params)`` is called at
    the start and after each kept step; ``progress(kept, steps)`` after each kept step, and ``progress(steps,
    steps)`` at the end when that was not the last call (a rejected step), so a progress bar always ends full;
    never with 0 steps (no (0, 0), which a bar computing done / total would divide by). ``keep_kept_steps``: a
    rejected step ends adaptation at the steps before it rather than at the start. ``lr``: a number,
    or the bundle's learned rates, a (steps, adapted tensors) float32 array (``step_rate``).

    With the safeguard, an unbalanced support set (classes with different numbers of shots) is
    adapted on the class-balanced loss (Graphs.step), as meta-training's balanced tasks were: with the
    plain mean, one shot against 200 images of another class is out-voted (1/19 of its queries right
    after 3 steps, 19/19 before). Balanced sets are unaffected (the two losses are the same)."""
    balanced = bool(safeguard) and _is_unbalanced(labels)
    if visit is not None:
        visit(0, params)

    def forward(p):
        logits, features = graphs.forward(images, p)
        return support_loss(logits, labels, balanced), (logits, features)

    def step(p, rate):
        return graphs.step(images, labels, rate, p, class_balanced=balanced)

    def bound(final, p):
        return rounding_bound(*final, p, labels, balanced)

    def ended(trajectory: _Trajectory) -> _Trajectory:
        if progress is not None and 0 < steps and len(trajectory.lrs) < steps:
            progress(steps, steps)
        return trajectory

    if steps == 0:
        return ended(_Trajectory(params, [forward(params)[0]], class_balanced=balanced))
    loss, candidate = step(params, step_rate(lr, 0))
    trajectory = _Trajectory(params, [loss], class_balanced=balanced)
    if not math.isfinite(loss):
        return ended(trajectory)  # the caller reports a diverged start (non-finite images or parameters)
    if not safeguard:
        for i in range(steps):
            params = candidate
            if i + 1 < steps:
                loss, candidate = step(params, step_rate(lr, i + 1))
            else:
                loss = forward(params)[0]
            trajectory.lrs.append(step_rate(lr, i))
            trajectory.losses.append(loss)
            if visit is not None:
                visit(i + 1, params)
            if progress is not None:
                progress(i + 1, steps)
        trajectory.params = params
        return ended(trajectory)
    resolution = _loss_resolution(int(labels.max()) + 1)
    start = (params, loss)
    while len(trajectory.lrs) < steps:
        if len(trajectory.lrs) + 1 == steps:  # the last step: judged by one forward pass
            new_loss, final = forward(candidate)
            ok = _finite(candidate) and new_loss <= loss + bound(final, candidate)
        else:  # judged by the next step's own loss (which is also that step's start)
            new_loss, after = step(candidate, step_rate(lr, len(trajectory.lrs) + 1))
            ok = math.isfinite(new_loss) and new_loss <= loss + resolution and _finite(candidate)
        if not ok:  # back to the start (see the module docstring), or to the last kept step
            trajectory.rejected = {"step": len(trajectory.lrs) + 1, "loss_before": loss, "loss_after": new_loss}
            if not keep_kept_steps:
                params, loss = start
                trajectory.lrs, trajectory.losses = [], [loss]
            break
        params, loss = candidate, new_loss
        trajectory.lrs.append(step_rate(lr, len(trajectory.lrs)))
        trajectory.losses.append(loss)
        if len(trajectory.lrs) < steps:
            candidate = after
        if visit is not None:
            visit(len(trajectory.lrs), params)
        if progress is not None:
            progress(len(trajectory.lrs), steps)
    trajectory.params = params
    return ended(trajectory)


def check_finite(trajectory: _Trajectory, lr) -> None:
    """A diverged adaptation is an error, never a saved model."""
    loss = trajectory.losses[-1]
    if not (math.isfinite(trajectory.losses[0])):
        raise FastadaptError("the support loss is not finite before any step: the shots or the model hold "
                             "NaN/inf values; check the images (and re-export the model)")
    if not math.isfinite(loss) or not _finite(trajectory.params):
        raise FastadaptError(f"adaptation diverged (support loss {trajectory.losses[-1]}, non-finite weights); "
                             f"lower {{lr}} (now {_describe_lr(lr)}) or turn {{safeguard}} on; nothing was saved",
                             "lr", "safeguard")


def check_zero_head(trajectory: _Trajectory, steps: int, lr) -> None:
    """A zero-initialised head that no step moved answers every image with the first class at 1/N:
    an error, never a saved model."""
    if trajectory.lrs:
        return
    if steps == 0:
        raise FastadaptError("{steps} 0 leaves this model's zero-initialised head at zero, so every image would get "
                             "the same answer; give 1 or more steps (or leave {steps} out for the recipe's)", "steps")
    r = trajectory.rejected
    raise FastadaptError(f"SGD step 1 raised the support loss ({r['loss_before']:.4g} -> {r['loss_after']:.4g}) and "
                         f"this model's head starts at zero, so without a step every image would get the same answer; "
                         f"lower {{lr}} (now {_describe_lr(lr)}) or check that the shots look like the model's "
                         f"training data; nothing was saved", "lr")


def _describe_lr(lr) -> str:
    """"0.4", or for learned rates "the learned rates (0.02..0.61)"."""
    if isinstance(lr, np.ndarray):
        return f"the learned rates ({float(lr.min()):g}..{float(lr.max()):g})"
    return f"{lr:g}"


def _held_out_folds(labels: np.ndarray, ways: int, folds: int) -> list:
    """Boolean masks: fold f holds out the f-th shot of every class (classes keep >= 1 shot)."""
    position = np.zeros(len(labels), dtype=np.int64)
    seen = np.zeros(ways, dtype=np.int64)
    for i, y in enumerate(labels):
        position[i] = seen[y]
        seen[y] += 1
    return [position == f for f in range(folds)]


def choose_steps(graphs, init_head: Callable[[np.ndarray, np.ndarray], dict], images: np.ndarray,
                 labels: np.ndarray, ways: int, recipe_steps: int, lr: float, safeguard: bool,
                 zero_head: bool = False) -> tuple:
    """steps="auto": (steps, report). For each of AUTO_FOLDS held-out shot positions, adapt on the other
    shots and score the held-out ones after 0, 1, ..., recipe_steps steps; choose the number with the best
    held-out accuracy, ties broken by the lower held-out loss. A zero head (``zero_head``) needs 1 step or more."""
    counts = np.bincount(labels, minlength=ways)
    if counts.min() < 2:
        return recipe_steps, {"chosen": recipe_steps, "note": f"steps='auto' needs at least 2 shots per class "
                                                              f"(one class has {counts.min()}); used the recipe's {recipe_steps}"}
    folds = _held_out_folds(labels, ways, min(AUTO_FOLDS, int(counts.min())))
    correct = np.zeros(recipe_steps + 1)
    loss = np.zeros(recipe_steps + 1)
    for held in folds:
        x, y, hx, hy = images[~held], labels[~held], images[held], labels[held]
        scores = []

        def visit(kept: int, params: dict) -> None:
            logits, _ = graphs.forward(hx, params)
            scores.append(((logits.argmax(1) == hy).sum(), support_loss(logits, hy) * len(hy)))

        trajectory = run_steps(graphs, x, y, init_head(x, y), recipe_steps, lr, safeguard=safeguard, visit=visit,
                               keep_kept_steps=zero_head)
        if trajectory.rejected is not None:  # from the rejected step on, adapt(steps=s) ends where run_steps did
            scores = scores[:trajectory.rejected["step"]]
        scores += [scores[-1] if zero_head else scores[0]] * (recipe_steps + 1 - len(scores))
        correct += [c for c, _ in scores]
        loss += [value if math.isfinite(value) else math.inf for _, value in scores]
    held_out = sum(int(h.sum()) for h in folds)
    accuracy, loss = correct / held_out, loss / held_out
    chosen = int(min(range(int(zero_head), recipe_steps + 1), key=lambda s: (-accuracy[s], loss[s], s)))
    return chosen, {"chosen": chosen, "folds": len(folds), "held_out": held_out,
                    "accuracy": [round(float(a), 4) for a in accuracy], "loss": [round(float(v), 6) for v in loss],
                    "best_accuracy": round(float(accuracy[chosen]), 4)}
