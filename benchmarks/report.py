"""results.json -> RESULTS.md: one markdown table per section, with the targets of issues 5 and 10 beside."""

from __future__ import annotations

import numpy as np

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
        "torch: `inner_loop.adapt` eager on the same parameters. Full: the shipped default model"
        f"{f' ({size}x{size})' if (size := r.get('input_size')) else ''}; head-only: an exported ANIL bundle.",
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
        *([] if "sgemm_peak_gflops" not in r else [
            "", f"Absolute times scale with the machine's speed, which drifts on a shared machine: its float32 "
            f"matrix-product peak (torch, 2048^3) measured {r['sgemm_peak_gflops'][0]:.0f} GFLOP/s before this "
            f"section and {r['sgemm_peak_gflops'][1]:.0f} after (section 1 gives the peak of its own run)."]),
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


def _cell(row: dict) -> str:
    return "n/a" if "n/a" in row else f"{row['accuracy_pct']:.1f} ± {row['ci95_pct']:.1f}"


def real_images(r: dict) -> str:
    variants = ("0 steps", "today's recipe", "safeguarded", "auto")
    rows, notes = [], {}
    for s in r["sets"]:
        v = s["variants"]
        for name in variants + ("baseline",):
            if "n/a" in v[name]:
                notes.setdefault(v[name]["n/a"], []).append(name)
        auto = _cell(v["auto"]) + (f" ({v['auto']['mean_steps']:.1f} steps)" if "mean_steps" in v["auto"] else "")
        others = [n for n in ("0 steps", "today's recipe") if "n/a" not in v[n]]
        met = gap = "—"
        if "n/a" not in v["safeguarded"] and len(others) == 2:
            better = max(others, key=lambda n: v[n]["accuracy_pct"])
            met = "yes" if v["safeguarded"]["accuracy_pct"] >= v[better]["accuracy_pct"] - 0.5 else "**no**"
            diff = 100 * (np.asarray(v["safeguarded"]["per_episode"]) - np.asarray(v[better]["per_episode"]))
            gap = f"{diff.mean():+.1f} ± {1.96 * diff.std(ddof=1) / np.sqrt(len(diff)):.1f} ({better})"
        rows.append([s["set"], f"{s['ways']}-way {s['shots']}-shot", _cell(v["0 steps"]), _cell(v["today's recipe"]),
                     f"**{_cell(v['safeguarded'])}**", auto, f"{_cell(v['baseline'])} ({s['baseline']})", gap, met])
    phone = []
    for reference, other in r["comparisons"]:
        for name in ("0 steps", "safeguarded"):
            a, b = reference["variants"][name], other["variants"][name]
            gap = "—" if "n/a" in a or "n/a" in b else f"{b['accuracy_pct'] - a['accuracy_pct']:+.1f}"
            phone.append([f"{reference['set']} → {other['set'].split(': ', 1)[1]}", name, _cell(a), _cell(b), gap])
    first = r["sets"][0] if r["sets"] else {}
    lines = [
        f"The model {r.get('model', 'shipped default (fastadapt.load())')} (preprocessing "
        f"{_preprocess(r.get('preprocess', {}))}) on "
        "image sets built at run time from pictures that ship inside scikit-learn, scikit-image and matplotlib, "
        "and from drawings made with PIL (benchmarks/real_images.py). Per set: "
        f"{first.get('episodes', '?')} seeded episodes, {first.get('query', '?')} queries per class disjoint from "
        "the shots, the same episodes for every column; accuracy % mean ± 95% CI (1.96·std/√n over episodes). "
        "Adapted through the public API on the files (`model.adapt({label: [paths]}, ...)`, "
        "`adapted.predict(paths)`): 0 steps `steps=0`; today's recipe `safeguard=False` (the meta-trained "
        "steps, kept whatever they do); safeguarded: the default call; auto `steps=\"auto\"` (mean number of "
        "steps chosen); a colour model adapts with its colour cue as the default call does (`colour=\"auto\"`, "
        "runtime/colour.py) in every column. Baseline: 1-nearest-neighbour on 28x28 grey pixels or colour/grey histograms of the files "
        "as stored. Target: safeguarded ≥ the better of 0 steps and today's recipe − 0.5 points; beside it the "
        "episode-by-episode difference from that better variant (mean ± 95% CI, points).",
        "",
        table(["set", "task", "0 steps", "today's recipe", "safeguarded (default)", "auto", "1-NN baseline",
               "safeguarded − the better, paired", "target met"], rows),
        "",
        "Sets, and what the adaptation reported (episodes where today's recipe ended with a higher support loss "
        "than it started with; episodes where the safeguarded call warned that the shots look unlike the "
        "model's training data):",
        "",
        *[f"- {s['set']}: {s['about']}; {s['classes']} classes{_reported(s)}." for s in r["sets"]],
        "",
        "The same camera-like drawings as phones store them (6-way 5-shot, same episodes on both sides): JPEGs "
        "stored rotated with an EXIF orientation tag (3, 6 or 8, per picture) against the upright pixels, and the "
        "picture in a 16:9 frame against the square one. Targets: EXIF-rotated = upright; 16:9 within 1 point.",
        "",
        table(["pictures", "adaptation", "reference", "as phones store them", "difference (points)"], phone),
    ]
    if r.get("fits"):
        square = r["comparisons"][1][0]["variants"]
        own = r.get("preprocess", {}).get("fit", "stretch")  # bundles without "fit" stretch
        rows = [[f"`{x['fit']}`", *[f"{_cell(x['variants'][n])} ({x['variants'][n]['accuracy_pct'] - square[n]['accuracy_pct']:+.1f})"
                                    if "n/a" not in x["variants"][n] and "n/a" not in square[n] else "n/a"
                                    for n in ("0 steps", "safeguarded")]] for x in r["fits"]]
        lines += ["", f"The 16:9 frames with the model's preprocessing set to each other way of making a picture square "
                      f"(the shipped model's own, `{own}`, is above; in brackets: points against the square frames): "
                      "`stretch` squashes the frame, `pad` fits it inside the square and pads with the background, "
                      "`crop` keeps the centre square.", "",
                  table(["fit", "0 steps", "safeguarded"], rows)]
    if notes:
        lines += ["", *[f"n/a ({', '.join(names)}): the installed fastadapt refused the call: `{error}`"
                        for error, names in notes.items()]]
    lines += ["", f"fastadapt at commit {r.get('fastadapt_commit', '?')}."]
    return "\n".join(lines)


def _reported(s: dict) -> str:
    recipe, safe = s["variants"]["today's recipe"], s["variants"]["safeguarded"]
    parts = []
    if "loss_rose_episodes" in recipe:
        parts.append(f"loss rose with today's recipe {recipe['loss_rose_episodes']}/{s['episodes']}")
    if "warned_episodes" in safe:
        parts.append(f"safeguarded warned {safe['warned_episodes']}/{s['episodes']}")
    return f" ({'; '.join(parts)})" if parts else ""


def _preprocess(p: dict) -> str:
    return ", ".join(f"{k} {p[k]}" for k in ("size", "channels", "invert", "fit") if k in p) or "?"


def unknown(r: dict) -> str:
    if "skipped" in r:
        return f"Not measured: {r['skipped']}."
    m = r["metrics"]
    fmt = lambda name, pct=False: (f"{100 * m[name]['mean']:.1f} ± {100 * m[name]['ci95']:.1f}" if pct else  # noqa: E731
                                   f"{m[name]['mean']:.3f} ± {m[name]['ci95']:.3f}") if name in m else "n/a"
    lines = [
        f"Omniglot evaluation alphabets, {r['ways']}-way {r['shots']}-shot, {r['tasks']} tasks: the shipped default "
        f"model adapted with the default call, then `adapted.predict(images, unknown=True)` on {r['query']} new "
        f"drawings of each task character (known) and one drawing each of {r['unknowns']} characters outside the "
        "task (unknown). Per task, then mean ± 95% CI over tasks: AUROC of the score (known vs unknown), and the "
        f"accuracy on known queries (accepted and right) at a {100 * r['far']:.0f}% false-accept rate (the "
        f"threshold chosen per task with hindsight, so that at most {100 * r['far']:.0f}% of the unknowns score above it). Closed-set accuracy on the known queries: "
        f"{fmt('closed_set', True)}%"
        + (f"; the adaptation warned that the shots look unlike the training data in {r['warned_tasks']} of "
           f"{r['tasks']} tasks." if "warned_tasks" in r else "."),
        "",
        table(["score", "AUROC (target ≥ 0.90)", f"accuracy % at {100 * r['far']:.0f}% false accepts"], [
            ["`Prediction.score`", fmt("auroc_score"), fmt("acc_at_far_score", True)],
            ["maximum softmax probability", fmt("auroc_probability"), fmt("acc_at_far_probability", True)]]),
    ]
    if "calibrated_false_accept" in m:
        lines += ["", f"With the threshold calibrated on the shots at adaptation (`unknown=True`): unknowns accepted "
                      f"{fmt('calibrated_false_accept', True)}%, known queries rejected "
                      f"{fmt('calibrated_false_reject', True)}%, known queries accepted with the right label "
                      f"{fmt('calibrated_accuracy', True)}%."]
    elif not r.get("score_available", True):
        lines += ["", "`predict(..., unknown=True)` was not available in the installed fastadapt: only the "
                      "probability was scored."]
    return "\n".join(lines)


SECTIONS = (("training", "1. Meta-training throughput vs higher", training),
            ("adaptation", "2. On-device adaptation and prediction latency", adaptation),
            ("footprint", "3. Footprint", footprint),
            ("time", "4. Time to 95% validation accuracy", time_to_accuracy),
            ("before", "5. Before and after the optimisations", before_after),
            ("real", "6. Real images: does adaptation help on pictures nobody on the project made?", real_images),
            ("real_photos", "6b. Real images, the photos model (`--model photos`)", real_images),
            ("unknown", "7. Unknown detection: characters outside the task", unknown),
            ("gpu", "8. Meta-training on a CUDA GPU vs higher", None))


def render(results: dict) -> str:
    parts = ["# fastadapt benchmark results", "",
             "Written by `python -m benchmarks` (see benchmarks/README.md for what each number means and the "
             "optimisation log); do not edit by hand. Ratios are measured side by side in one run; absolute "
             "times drift with the machine's load.", ""]
    for key, title, fn in SECTIONS:
        parts += [f"## {title}", ""]
        if key == "gpu":  # rendered by benchmarks/gpu.py; "not measured" rows until a GPU run exists
            from .gpu import render as gpu
            parts += [gpu(results.get(key))] + (["", _measured(results[key])] if key in results else [])
        elif key in results:
            text = before_after(results[key], results) if fn is before_after else fn(results[key])
            parts += [text, "", _measured(results[key])]
        else:
            command = "real --model photos" if key == "real_photos" else key
            parts += ["Not measured yet: `python -m benchmarks --only " + command + "`."]
        parts.append("")
    return "\n".join(parts)
