"""Export verification: adapt a task through the shipped runtime and in torch, and compare.

One job: before ``bundle_export`` writes anything, the in-memory bundle is loaded as the runtime's
``Model`` and adapted with its own head initialisation and SGD-step driver (``Model.adapt_arrays``,
safeguard off: the plain recipe), so the graphs are checked through the code that ships rather than
a copy of it. The reference is torch's inner loop, step by step from the runtime's own parameters, and
every adapted parameter and the query logits must satisfy ``agrees``, the one tolerance rule of export
and the parity tests.
"""

from __future__ import annotations

import numpy as np
import torch

from ..bundle import Bundle
from ..errors import FastadaptError
from ..runtime import Model
from ..standalone import VERIFY_TOL, agrees  # the one tolerance rule (torch-free, so the runtime's export shares it)
from . import inner_loop as il

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
        visited = [runtime_model.adapt_arrays(support_x.numpy(), support_y.numpy(), names, steps=t, safeguard=False,
                                              quiet=True, colour="off").params for t in range(steps + 1)]
        logits, _ = runtime_model.graphs.forward(query_x.numpy(), visited[-1])
    except FastadaptError as exc:  # e.g. a diverged adaptation: the bundle would fail on a device too
        raise FastadaptError(f"export verification failed: the runtime could not adapt the sample task ({exc}); "
                             f"nothing was written") from None

    meta = {k: torch.from_numpy(v) for k, v in bundle.params.items()}
    learned = bundle.manifest["inner_loop"].get("learned_lrs")
    rates = torch.tensor(learned, dtype=torch.float32) if learned is not None else recipe.lr
    as_torch = lambda params: {k: torch.from_numpy(v) for k, v in params.items()}  # noqa: E731
    worst = 0.0
    for t, runtime_params in enumerate(visited):
        if t == 0:
            reference = il.init_head(model, meta, support_x, support_y, ways, recipe)
        else:
            reference = il.sgd_step(model, as_torch(visited[t - 1]), support_x, support_y, recipe,
                                    il.step_rate(rates, t - 1), first_order=True)
        reference = {k: v.detach().numpy() for k, v in reference.items()}
        worst = max(worst, max(float(np.abs(runtime_params[k] - v).max()) for k, v in reference.items()))
        if not all(agrees(runtime_params[k], v) for k, v in reference.items()):
            raise FastadaptError(f"export verification failed: at SGD step {t} of {steps} (0: the head) the runtime "
                                 f"and torch differ by {worst:.2e} in the adapted parameters (tolerance "
                                 f"{VERIFY_TOL:.0e} x max(1, size)); nothing was written")
    with torch.no_grad():
        reference_logits = il.forward(model, as_torch(visited[-1]), query_x).numpy()
    if agrees(logits, reference_logits):
        return worst
    logit_diff = float(np.abs(logits - reference_logits).max())
    scale = max(1.0, float(np.abs(reference_logits).max()))
    raise FastadaptError(f"export verification failed: after {steps} SGD steps the runtime's and torch's logits "
                         f"differ by {logit_diff:.2e} for logits of size {scale:.3g} (tolerance {VERIFY_TOL:.0e} x "
                         f"max(1, size)); nothing was written")
