"""What a bundle is, as text: the model card and the whole description ``fastadapt info`` prints.

``model.model_card()`` and ``model.describe()`` (runtime/model.py) give the same for a loaded model;
``describe_bundle`` works on a bundle that was only read and verified (``bundle.read_bundle``), so a
bundle whose graphs onnxruntime cannot load can still be described. Text from the bundle is escaped
(``manifest.printable``): a bundle cannot drive the terminal it is described on.
"""

from __future__ import annotations

import textwrap

from ..bundle import Bundle
from ..errors import FastadaptError
from ..manifest import CARD_SECTIONS, printable
from .colour import decision

MAX_SHOWN = 2000  # characters of one free-form value (provenance, evaluation) on one line
CARD_WIDTH = 100  # model card text is wrapped to this many columns
# manifest fields with a row (or section) of their own; any other field is listed as it is
_DESCRIBED = {"format", "format_version", "kind", "architecture", "preprocess", "inner_loop", "classes", "adaptation",
              "provenance", "evaluation", "parameters", "members", "verification", "model_card"}


def model_card(manifest: dict) -> dict:
    """The model card (intended use, not for, data, training, evaluation, limitations), its known sections
    first in that order (manifest.CARD_SECTIONS); {} when the bundle has none."""
    card = manifest.get("model_card") or {}
    order = {key: i for i, key in enumerate(CARD_SECTIONS)}
    return {key: card[key] for key in sorted(card, key=lambda k: order.get(k, len(order)))}


def _card_lines(card: dict) -> list:
    """The model card as text lines, each section wrapped to CARD_WIDTH and indented."""
    lines = ["  model card"]
    for key, text in card.items():
        title = printable(key).replace("_", " ")
        lines += textwrap.wrap(printable(text), CARD_WIDTH, initial_indent=f"    {title}: ",
                               subsequent_indent="      ") or [f"    {title}:"]
    return lines


def _fmt(value, depth: int = 0) -> str:
    """One line for a JSON value from the manifest, escaped for the terminal and cut to MAX_SHOWN."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = " ".join(_fmt(v, depth + 1) for v in value) if len(value) <= 8 else f"{len(value)} items"
    elif isinstance(value, dict):
        text = ", ".join(f"{printable(k)}={_fmt(v, depth + 1)}" for k, v in list(value.items())[:40]) if depth < 4 \
            else f"{{{len(value)} keys}}"
    else:
        text = printable(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _number(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _signature(bundle: Bundle) -> str | None:
    """'KEY (valid)' for each signature the bundle carried when it was read, verified here whatever the
    trusted keys; None for an unsigned bundle or one made in memory."""
    from .. import signing

    if bundle.signed_by:
        return f"verified: signed by trusted key {bundle.signed_by}"
    if bundle.signatures is None or bundle.manifest_bytes is None:
        return None
    try:
        found = signing.parse_signatures(bundle.signatures, "bundle")  # the message is not shown
    except FastadaptError:
        return "malformed signature member"
    message = signing.bundle_message(bundle.manifest_bytes)
    return "; ".join(f"{key} ({'valid' if signing.verify(bytes.fromhex(key), message, sig) else 'INVALID'})"
                     for key, sig in found) or None


def _rows(bundle: Bundle) -> list:
    """(name, value) rows: architecture, preprocessing, recipe, classes, provenance, verification, signature."""
    m = bundle.manifest
    arch = dict(m.get("architecture") or {})
    if arch.get("name") in ("conv4", "resnet12"):
        arch.pop("hidden", None), arch.pop("in_features", None)  # MLP-only fields
    recipe = dict(m.get("inner_loop") or {})
    adapted = recipe.pop("adapted", None)
    if isinstance(adapted, list):
        recipe["adapted"] = f"{len(adapted)} tensors" if recipe.get("adapt") == "all" else " ".join(adapted)
    rates = recipe.get("learned_lrs")
    if isinstance(rates, list) and rates and all(isinstance(row, list) and row for row in rates):
        values = [x for row in rates for x in row]
        recipe["learned_lrs"] = (f"{len(rates)} steps x {len(rates[0])} tensors, {min(values):.3g}..{max(values):.3g}"
                                 f" (lr {recipe.get('lr')} is where meta-training started them)")
    rows = [("architecture", arch), ("preprocess", m.get("preprocess")), ("inner loop", recipe)]
    if m.get("kind") == "adapted":
        classes = m.get("classes") or []
        shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
        rows.append(("classes", f"{len(classes)}: {shown}"))
        a = m.get("adaptation") or {}
        if a:
            colour = decision(a.get("colour"))
            rows.append(("adapted", f"{_fmt(a.get('steps'))} step{'' if a.get('steps') == 1 else 's'} at lr "
                                    f"{_fmt(a.get('lr'))} on {sum((a.get('shots_per_class') or {}).values())} images "
                                    f"from {_fmt((a.get('from') or {}).get('path'))}"
                                    + ("" if "shots.npz" in (m.get("members") or {}) else
                                       " (keeps no shots: classes cannot be added or removed)")
                                    + (f"; colour: {colour}" if colour else "")))
    for key, value in (m.get("provenance") or {}).items():
        rows.append((f"provenance.{key}", value))
    check = m.get("verification")
    if isinstance(check, dict) and "max_abs_diff" in check:
        rows.append(("verification", f"onnxruntime vs torch: max |difference| {_number(check['max_abs_diff'], '.1e')} "
                                     f"after {_fmt(check.get('steps'))} SGD steps on a sample task (at export)"))
    signature = _signature(bundle)
    if signature:
        rows.append(("signature", signature))
    rows += [(name, value) for name, value in m.items() if name not in _DESCRIBED and value is not None]
    return [(printable(key)[:60], value) for key, value in rows]


def _evaluation_lines(evaluations) -> list:
    if isinstance(evaluations, dict):
        evaluations = [evaluations]
    lines = ["  evaluation"] if evaluations else []
    for e in evaluations[:50]:
        if e.get("accuracy_pct") is not None:
            what = ", ".join(f"{k} {_fmt(e[k])}" for k in ("ways", "shots", "query", "steps", "tasks", "data", "protocol")
                             if k in e and e[k] is not None)
            if "evaluated_with" in e:
                what += f", with {_fmt(e['evaluated_with'])}"
            if e.get("safeguard") is True:
                what += ", safeguarded"
            if "adapt_ms_median" in e:
                what += f", adaptation {_fmt(e['adapt_ms_median'])} ms/task"
            lines.append(f"    {_number(e['accuracy_pct'], '.2f')}% ± {_number(e.get('ci95_pct'), '.2f')}  ({what})")
        else:
            lines.append(f"    {_fmt({k: v for k, v in e.items() if k != 'per_task_accuracy'})}")
    if len(evaluations) > 50:
        lines.append(f"    ... ({len(evaluations)} in all)")
    return lines


def describe_bundle(bundle: Bundle) -> str:
    """Kind, architecture, preprocessing, inner-loop recipe, classes, provenance, model card and evaluations
    of a verified bundle, one line each (what ``fastadapt info`` prints)."""
    m = bundle.manifest
    count = sum(int(v.size) for v in bundle.params.values())
    size = f"{bundle.size / 1e6:.2f} MB, " if bundle.size is not None else ""  # as read, not as the file is now
    lines = [f"{printable(bundle.path or '<in memory>')}  ({m.get('kind', 'meta')} bundle, format "
             f"{m.get('format_version')}, {size}{count:,} parameters)"]
    rows = _rows(bundle)
    width = max(len(k) for k, _ in rows)
    lines += [f"  {key:<{width}}  {_fmt(value)}" for key, value in rows]
    card = model_card(m)
    if card:
        lines += _card_lines(card)
    return "\n".join(lines + _evaluation_lines(m.get("evaluation") or []))
