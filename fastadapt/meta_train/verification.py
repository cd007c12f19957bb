"""Export verification: adapt a task through the shipped runtime and in torch, and compare.

One job: before ``bundle_export`` writes anything, the in-memory bundle is loaded as the runtime's
``Model`` and adapted with its own head initialisation and SGD-step driver (``Model.adapt_arrays``,
safeguard off: the plain recipe), so the graphs are checked through the code that ships rather than
a copy of it. The reference is torch's inner loop, step by step from the runtime's own parameters, and
every adapted parameter and the query logits must satisfy ``agrees``, the one tolerance rule of export
and the parity tests, or, where the computation is so ill-conditioned that torch's own float32 result is
as far from float64 (a large inner learning rate, many shots), ``within_rounding`` of a float64 reference.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..bundle import Bundle
from ..errors import FastadaptError
from ..runtime import Model
from ..runtime.adaptation import EPS32
from ..standalone import VERIFY_TOL, agrees  # the one tolerance rule (torch-free, so the runtime's export shares it)
from . import inner_loop as il


def within_rounding(value, reference32, reference64) -> bool:
    """Whether ``value`` (float32, the runtime) is no farther from the float64 ``reference64`` than a correct
    float32 computation is: 4x torch's own float32 error plus 8 ulps of the values' size. A wrong graph or
    gradient term moves values by far more than rounding does, whatever the conditioning."""
    value, reference32, reference64 = (np.asarray(a, np.float64) for a in (value, reference32, reference64))
    rounding = float(np.abs(reference32 - reference64).max())
    return float(np.abs(value - reference64).max()) <= 4 * rounding + 8 * EPS32 * max(1.0, float(np.abs(reference64).max()))


def sample_task(shape: tuple, ways: int = 5, shots: int = 2, queries: int = 3, seed: int = 0):
    """A deterministic random task: class-dependent mean images plus noise."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(ways, *shape, generator=generator)
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_y = torch.arange(ways).repeat_interleave(queries)
    support_x = means[support_y] + 0.5 * torch.randn(len(support_y), *shape, generator=generator)
    query_x = means[query_y] + 0.5 * torch.randn(len(query_y), *shape, generator=generator)
    return support_x, support_y, query_x


def verify(bundle: Bundle, model, steps: int, task: tuple | None = None) -> float:
    """Adapt ``task`` (support_x, support_y, query_x; default a synthetic 5-way 2-shot one) for ``steps``
    SGD steps in the runtime, and check every step against torch with the bundle's recipe.

    Each runtime step is compared with torch's step *from the runtime's own previous parameters* (and the
    runtime's head initialisation with torch's on the meta-parameters). Whole trajectories are not compared:
    the inner loop is only piecewise smooth (ReLU and max-pool choices), so where a task passes near a kink a
    float32 rounding difference in one step can flip a choice and move the next step by 1e-3 (measured: a
    1e-6 perturbation of a synthetic-glyph task's parameters changed the next step by 1e-3, while torch's
    float32 and float64 agreed to 2e-6). Step by step, any error in a graph or in the runtime's driver (its
    head, its rates, its chunking) still shows at the step where it happens.

    Returns the largest difference of the adapted parameters. Raises FastadaptError unless every adapted
    parameter at every step and the forward graph's logits on the query images ``agrees`` with torch.
    """
    recipe = il.InnerLoop.from_dict(bundle.manifest["inner_loop"])
    try:
        runtime_model = Model(bundle)
        pre = runtime_model.preprocess
        support_x, support_y, query_x = task if task is not None else sample_task((pre.channels, pre.size, pre.size))
        ways = int(support_y.max()) + 1
        names = [str(c) for c in range(ways)]
        # the runtime is deterministic, so the parameters after t steps are those of a t-step adaptation
        # colour off: a colour model's adaptation may add a colour head (runtime/colour.py) beside the
        # network, which is not torch's inner loop; the graphs are what is verified here
        # (t = 0 is the runtime's head initialisation itself: adapt refuses 0 steps of a zero head, a useless model)
        visited = [runtime_model._init_head(support_x.numpy(), support_y.numpy(), ways)]
        visited += [runtime_model.adapt_arrays(support_x.numpy(), support_y.numpy(), names, steps=t, safeguard=False,
                                               quiet=True, colour="off").params for t in range(1, steps + 1)]
        logits, _ = runtime_model.graphs.forward(query_x.numpy(), visited[-1])
    except FastadaptError as exc:  # e.g. a diverged adaptation: the bundle would fail on a device too
        raise FastadaptError(f"export verification failed: the runtime could not adapt the sample task ({exc}); "
                             f"nothing was written") from None

    meta = {k: torch.from_numpy(v) for k, v in bundle.params.items()}
    learned = bundle.manifest["inner_loop"].get("learned_lrs")
    rates = torch.tensor(learned, dtype=torch.float32) if learned is not None else recipe.lr
    # an adapted model's params are read-only views (runtime/model.py); torch wants writable arrays: copies
    as_torch = lambda params: {k: torch.from_numpy(np.array(v)) for k, v in params.items()}  # noqa: E731
    model64 = []  # [the float64 copy of model], made only if some comparison needs it

    def exact_model():
        if not model64:
            model64.append(copy.deepcopy(model).double())
        return model64[0]

    def reference_step(t: int, net, dtype) -> dict:
        cast = lambda params: {k: v.to(dtype) for k, v in params.items()}  # noqa: E731
        if t == 0:
            step = il.init_head(net, cast(meta), support_x.to(dtype), support_y, ways, recipe)
        else:
            step = il.sgd_step(net, cast(as_torch(visited[t - 1])), support_x.to(dtype), support_y, recipe,
                               il.step_rate(rates, t - 1), first_order=True)
        return {k: v.detach().numpy() for k, v in step.items()}

    worst = 0.0
    for t, runtime_params in enumerate(visited):
        reference = reference_step(t, model, torch.float32)
        worst = max(worst, max(float(np.abs(runtime_params[k] - v).max()) for k, v in reference.items()))
        matched = all(agrees(runtime_params[k], v) for k, v in reference.items())
        if not matched:  # rounding or an error? torch's own float32 distance from float64 tells
            exact = reference_step(t, exact_model(), torch.float64)
            matched = all(within_rounding(runtime_params[k], v, exact[k]) for k, v in reference.items())
        if not matched:
            raise FastadaptError(f"export verification failed: at SGD step {t} of {steps} (0: the head) the runtime "
                                 f"and torch differ by {worst:.2e} in the adapted parameters (tolerance "
                                 f"{VERIFY_TOL:.0e} x max(1, size), or float32 rounding of a float64 reference); "
                                 f"nothing was written")
    with torch.no_grad():
        reference_logits = il.forward(model, as_torch(visited[-1]), query_x).numpy()
        if agrees(logits, reference_logits):
            return worst
        exact = il.forward(exact_model(), {k: v.double() for k, v in as_torch(visited[-1]).items()}, query_x.double())
    if within_rounding(logits, reference_logits, exact.numpy()):
        return worst
    logit_diff = float(np.abs(logits - reference_logits).max())
    scale = max(1.0, float(np.abs(reference_logits).max()))
    raise FastadaptError(f"export verification failed: after {steps} SGD steps the runtime's and torch's logits "
                         f"differ by {logit_diff:.2e} for logits of size {scale:.3g} (tolerance {VERIFY_TOL:.0e} x "
                         f"max(1, size), or float32 rounding of a float64 reference); nothing was written")
