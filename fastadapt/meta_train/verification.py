"""Export verification: adapt a task through the shipped runtime and in torch, and compare.

One job: before ``bundle_export`` writes anything, the in-memory bundle is loaded as the runtime's
``Model`` and adapted with its own head initialisation and SGD-step driver (``Model.adapt_arrays``,
safeguard off: the plain recipe), so the graphs are checked through the code that ships rather than
a copy of it. The reference is torch's ``inner_loop.adapt``, and every adapted parameter and the query
logits must satisfy ``agrees``, the one tolerance rule of export and the parity tests.
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
    SGD steps in the runtime and in torch, with the bundle's recipe.

    Returns the max abs difference of the adapted parameters. Raises FastadaptError unless each adapted
    parameter and the forward graph's logits on the query images ``agrees`` with torch.
    """
    recipe = il.InnerLoop.from_dict(bundle.manifest["inner_loop"])
    try:
        runtime_model = Model(bundle)
        pre = runtime_model.preprocess
        support_x, support_y, query_x = task if task is not None else sample_task((pre.channels, pre.size, pre.size))
        ways = int(support_y.max()) + 1
        adapted = runtime_model.adapt_arrays(support_x.numpy(), support_y.numpy(), [str(c) for c in range(ways)],
                                             steps=steps, safeguard=False, quiet=True)
        logits, _ = adapted.graphs.forward(query_x.numpy(), adapted.params)
    except FastadaptError as exc:  # e.g. a diverged adaptation: the bundle would fail on a device too
        raise FastadaptError(f"export verification failed: the runtime could not adapt the sample task ({exc}); "
                             f"nothing was written") from None

    meta = {k: torch.from_numpy(v) for k, v in bundle.params.items()}
    if "learned_lrs" in bundle.manifest["inner_loop"]:
        meta[il.LEARNED_LRS] = torch.tensor(bundle.manifest["inner_loop"]["learned_lrs"], dtype=torch.float32)
    reference = il.adapt(model, meta, support_x, support_y, ways, recipe, steps=steps, first_order=True)
    with torch.no_grad():
        reference_logits = il.forward(model, reference, query_x).numpy()
    reference = {k: v.detach().numpy() for k, v in reference.items()}

    param_diff = max(float(np.abs(adapted.params[k] - v).max()) for k, v in reference.items())
    if all(agrees(adapted.params[k], v) for k, v in reference.items()) and agrees(logits, reference_logits):
        return param_diff
    logit_diff = float(np.abs(logits - reference_logits).max())
    scale = max(1.0, float(np.abs(reference_logits).max()))
    raise FastadaptError(f"export verification failed: after {steps} SGD steps the runtime and torch differ by "
                         f"{param_diff:.2e} in the adapted parameters and {logit_diff:.2e} in logits of size "
                         f"{scale:.3g} (tolerance {VERIFY_TOL:.0e} x max(1, size)); nothing was written")
