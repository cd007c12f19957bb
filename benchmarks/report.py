"""results.json -> RESULTS.md: one markdown table per section, with the targets of issue 5 beside."""

from __future__ import annotations

from .common import table


def _measured(section: dict) -> str:
    m = section.get("measured", {})
    return (f"*Measured {m.get('at', '?')} on {m.get('machine', '?')}; torch {m.get('torch', '?')}, "
            f"onnxruntime {m.get('onnxruntime', '?')}.*")


def training(r: dict) -> str:
    rows = [[x["algorithm"].upper() if x["algorithm"] == "maml" else "FOMAML", x["inner_steps"],
             f"{x['fastadapt_tasks_per_s']:.1f}", f"{x['higher_tasks_per_s']:.1f}", f"**{x['ratio']:.2f}x**",
             f"{x['gflop_per_task']:.2f}",
             f"{x['fastadapt_gflops']:.0f} ({100 * x['fastadapt_gflops'] / r['sgemm_peak_gflops']:.0f}%)",
             f"{x['higher_gflops']:.0f} ({100 * x['higher_gflops'] / r['sgemm_peak_gflops']:.0f}%)"]
            for x in r["rows"]]
    return "\n".join([
        f"Omniglot ({r['data']}) 5-way 1-shot, 15 queries per class, meta-batch 32, Conv4 (64 filters, instance "
        f"norm), CPU, {r['threads']} torch threads; tasks/s over iterations 2..{r['iterations']} (the first is "
        f"warm-up), best of {r.get('rounds', 1)} alternating rounds. fastadapt: the "
        "real `fastadapt train` loop (task sampling + meta-gradient + Adam step). higher: its maml-omniglot "
        "`innerloop_ctx` loop on the same model and the same sampled tasks. GFLOP/s in brackets: share of the "
        f"machine's measured float32 matrix-product peak ({r['sgemm_peak_gflops']:.0f} GFLOP/s, torch, 2048^3).",
        "",
        table(["algorithm", "inner steps", "fastadapt tasks/s", "higher tasks/s", "ratio (target ≥ 1.5x)",
               "GFLOP per task", "fastadapt GFLOP/s", "higher GFLOP/s"], rows),
        "",
        "learn2learn: not measured, it does not build on Python 3.11. CUDA GPU (target ≥ 10x higher): not "
        "measured, no GPU was lent to the session that ran this.",
    ])


def adaptation(r: dict) -> str:
    rows = [[x["adapt"], f"{x['ways']}-way {x['shots']}-shot", x["steps"], f"{x['runtime_ms']:.1f}",
             f"{x['torch_ms']:.1f}", f"**{x['ratio']:.2f}x**"] for x in r["adaptation"]]
    e2e = [[x["adapt"], f"{x['ways']}-way {x['shots']}-shot", x["steps"], f"{x['end_to_end_ms']:.1f}",
            "≤ 50" if x["adapt"] == "head-only" else "—"] for x in r["end_to_end"]]
    p = r["prediction"]
    threads = r["adaptation"][0]["threads"] if r["adaptation"] else "?"
    return "\n".join([
        f"Head initialisation + k SGD steps on a real support set (Omniglot evaluation alphabets), median ms, "
        f"{threads} intra-op threads each. Runtime: `Model.adapt_arrays` (onnxruntime, the exported step graph); "
        "torch: `inner_loop.adapt` eager on the same parameters. Full: the shipped default model; head-only: an "
        "exported ANIL bundle.",
        "",
        table(["adapted", "task", "steps k", "runtime ms", "torch ms", "runtime / torch (target ≤ 1.0x)"], rows),
        "",
        "End to end, `model.adapt(folder)`: reading and preprocessing the PNG files, head initialisation and the "
        "bundle's own number of steps:",
        "",
        table(["adapted", "task", "steps", "ms", "target ms"], e2e),
        "",
        f"**Prediction** (adapted default model, 5 classes, {p['threads']} threads): one preprocessed image "
        f"p50 {p['array_p50_ms']:.3f} ms, p99 {p['array_p99_ms']:.3f} ms; one PNG path end to end (decode, "
        f"preprocess, forward, softmax) p50 {p['png_p50_ms']:.3f} ms, p99 {p['png_p99_ms']:.3f} ms (target ≤ 2 ms); "
        f"batches of {p['batch']}: {p['batch_images_per_s']:.0f} images/s.",
    ])


def footprint(r: dict) -> str:
    rt, adapt = r["runtime_install"], r["adapt_20w5s"]
    lines = [
        table(["install", "site-packages MB (without pip/setuptools)", "largest packages (MB)", "target"], [
            ["`pip install fastadapt` (runtime)", f"**{rt['total_mb']:.0f}**",
             ", ".join(f"{n} {mb:.0f}" for n, mb in rt["largest"][:6]), "≤ 150"],
            *([["`pip install \"fastadapt[train]\"` (torch 2.13 CPU)", f"{r['train_install']['total_mb']:.0f}",
                ", ".join(f"{n} {mb:.0f}" for n, mb in r["train_install"]["largest"][:4]), "—"]]
              if "train_install" in r else []),
        ]),
        "",
        f"`fastadapt adapt --shots <20 classes x 5 Omniglot PNGs>` from the runtime-only venv: peak RSS "
        f"**{adapt['peak_rss_mb']:.0f} MB** (target ≤ 250), {adapt['wall_s_median']:.2f} s wall (median of 3, "
        "including Python start-up and writing the adapted bundle).",
    ]
    return "\n".join(lines)


def time_to_accuracy(r: dict) -> str:
    if "skipped" in r:
        return f"Not measured: {r['skipped']}."
    rows = [[x["name"], f"`{x['flags']}`", f"**{x['seconds'] / 60:.1f} min**" if x["reached"] else
             f"not within {x['budget_minutes']:g} min", x["iterations"], x["best_val"]] for x in r["rows"]]
    hardware = r["rows"][0]["hardware"] if r["rows"] else "?"
    return "\n".join([
        f"`fastadapt train --data omniglot --ways 5 --shots 1 --query 15 --meta-batch 8 --head-init prototype "
        f"--val-every 50 --val-tasks 100 --stop-at {r['target']:g} --max-minutes M` plus the flags below; wall "
        f"time from the start of training (pre-training included) to the first validation ≥ {r['target']:g}% "
        f"(100 validation tasks, ± about 1.5 points). Hardware: {hardware}. Each run takes minutes, so other "
        "work on the machine meanwhile lengthens it: read these as upper bounds.",
        "",
        table(["algorithm", "flags", "time to 95%", "iterations", "best validation %"], rows),
    ])


def before_after(r: dict, results: dict) -> str:
    name = lambda a: "MAML" if a == "maml" else "FOMAML"  # noqa: E731
    after_train = {(x["algorithm"], x["inner_steps"]): x for x in results.get("training", {}).get("rows", [])}
    train_rows = []
    for x in r["training"]["rows"]:
        a = after_train.get((x["algorithm"], x["inner_steps"]))
        train_rows.append([name(x["algorithm"]), x["inner_steps"],
                           f"{x['fastadapt_tasks_per_s']:.1f} / {x['higher_tasks_per_s']:.1f} ({x['ratio']:.2f}x)",
                           f"{a['fastadapt_tasks_per_s']:.1f} / {a['higher_tasks_per_s']:.1f} ({a['ratio']:.2f}x)"
                           if a else "—"])
    after_adapt = {(x["ways"], x["shots"], x["steps"]): x for x in results.get("adaptation", {}).get("adaptation", [])
                   if x["adapt"] == "full"}
    adapt_rows = []
    for x in r["adaptation"]:
        a = after_adapt.get((x["ways"], x["shots"], x["steps"]))
        adapt_rows.append([f"{x['ways']}-way {x['shots']}-shot", x["steps"],
                           f"{x['runtime_ms']:.1f} / {x['torch_ms']:.1f} ({x['runtime_ms'] / x['torch_ms']:.2f}x)",
                           f"{a['runtime_ms']:.1f} / {a['torch_ms']:.1f} ({a['ratio']:.2f}x)" if a else "—"])
    return "\n".join([
        f"The training and adaptation benchmarks on the code of commit {r['rev']} (before the performance "
        "work; its own shipped model and runtime), beside this run's figures (sections 1 and 2). Each "
        "pair was measured side by side, but before and after ran at different times: compare the ratios.",
        "",
        table(["algorithm", "inner steps", "before: fastadapt / higher tasks/s", "after"], train_rows),
        "",
        table(["full-network adaptation", "steps k", "before: runtime / torch ms", "after"], adapt_rows),
    ])


SECTIONS = (("training", "1. Meta-training throughput vs higher", training),
            ("adaptation", "2. On-device adaptation and prediction latency", adaptation),
            ("footprint", "3. Footprint", footprint),
            ("time", "4. Time to 95% validation accuracy", time_to_accuracy),
            ("before", "5. Before and after the optimisations", before_after))


def render(results: dict) -> str:
    parts = ["# fastadapt benchmark results", "",
             "Written by `python -m benchmarks` (see benchmarks/README.md for what each number means and the "
             "optimisation log); do not edit by hand. Ratios are measured side by side in one run; absolute "
             "times drift with the machine's load.", ""]
    for key, title, fn in SECTIONS:
        parts += [f"## {title}", ""]
        if key in results:
            text = before_after(results[key], results) if fn is before_after else fn(results[key])
            parts += [text, "", _measured(results[key])]
        else:
            parts += ["Not measured yet: `python -m benchmarks --only " + key + "`."]
        parts.append("")
    return "\n".join(parts)
