"""Device-side commands: adapt, predict (torch-free: numpy, pillow, onnxruntime). info: info_command.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FastadaptError, warn
from ..manifest import printable
from ..progress import lazy_reporter
from . import app, check_out

TOP = 3  # predict --top's default: runtime.model.TOP, the API's (not imported: the CLI starts without numpy; tested equal)

SHOTS_HELP = ("Folder with one subfolder per class, holding that class's example images (the folder name "
              "is the label): SHOTS/cat/1.png, SHOTS/dog/1.jpg ... At least 2 classes; any number of images "
              "per class, unbalanced is fine.")


@app.command(rich_help_panel="On the device")
def adapt(
    shots: Optional[Path] = typer.Option(None, "--shots", help=SHOTS_HELP + " Needed unless --add or --remove "
                                         "changes an adapted model.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Where to write the adapted model (.fadapt). Written only "
                                                "when adaptation succeeds, atomically.", show_default=False),
    model: Optional[Path] = typer.Option(None, "--model", help="The meta-trained bundle to start from "
                                         "(made by 'fastadapt export'), or with --add/--remove an adapted one. "
                                         "Default: the characters model shipped with fastadapt; "
                                         "'photos' names the shipped photos model."),
    add: Optional[Path] = typer.Option(None, "--add", help="With an adapted --model: a folder of class folders to "
                                       "add (one class is enough; an existing class gets the images added). "
                                       "Re-adapts from the meta model on the shots kept in the bundle and these: "
                                       "the same model as adapting on all the images at once.", show_default=False),
    remove: Optional[List[str]] = typer.Option(None, "--remove", help="With an adapted --model: a class to remove "
                                               "(repeat for several); re-adapts on the kept shots of the others.",
                                               show_default=False),
    steps: Optional[str] = typer.Option(None, "--steps", help="SGD steps on the shots, or 'auto' (choose 0..the "
                                        "recipe's steps by leave-one-shot-out on the shots; needs >= 2 per class). "
                                        "Default: the number the model was meta-trained for (see 'fastadapt info')."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Inner-loop learning rate. Default: the meta-trained "
                                       "value. Changing steps or lr leaves the recipe the model was trained for."),
    trusted_key: Optional[List[str]] = typer.Option(None, "--trusted-key", help="Accept only bundles signed by this "
                                                    "Ed25519 public key (hex, from 'fastadapt keygen'); repeat for several. "
                                                    "FASTADAPT_TRUSTED_KEYS adds to them."),
    safeguard: bool = typer.Option(True, "--safeguard/--no-safeguard", help="Keep only steps that do not raise "
                                   "the support loss (when a step raises it, adaptation keeps its start: 0 steps, with a warning; a "
                                   "zero-initialised head keeps the steps before it). "
                                   "--no-safeguard runs the plain recipe; both agree when no step raises the loss."),
    colour: Optional[str] = typer.Option(None, "--colour", help="Colour models (such as 'photos'): 'auto' adds a colour "
                                         "histogram to what tells the classes apart when leave-one-shot-out on the shots "
                                         "says it helps (needs >= 2 shots per class); 'off' never. Grey models ignore it. "
                                         "\\[default: auto; with --add/--remove: as the model was adapted]",
                                         show_default=False),
) -> None:
    """Teach a meta-trained model your classes from a few images each, and save the adapted model.

    Runs the inner loop the model was meta-trained for (head initialisation, then --steps SGD steps at --lr on all the shots) through ONNX Runtime; no torch needed. If a step would raise the support loss, adaptation keeps the model as it was before any step (with a warning): steps that make the shots fit worse are a sign they would make answers worse too. Prints the classes, the shots per class, the steps kept, the support loss before and after, and the time taken.

    Example: fastadapt adapt --shots my_shots/ --out mine.fadapt && fastadapt predict --model mine.fadapt photo.png

    Later: fastadapt adapt --model mine.fadapt --add new_shots/ --remove dog --out mine2.fadapt
    """
    from ..runtime import Model, load

    changing = add is not None or bool(remove)
    if changing and shots is not None:
        raise FastadaptError("--shots adapts a meta model, --add/--remove change an adapted one: give one or the other")
    if not changing and shots is None:
        raise FastadaptError("missing --shots DIR (a folder with one subfolder of images per class); or, with an "
                             "adapted --model, --add DIR / --remove LABEL")
    check_out(out, inputs=[shots, add, model])
    loaded = load(model, trusted_key)
    if changing and isinstance(loaded, Model):
        raise FastadaptError(f"--add/--remove change an adapted model, but --model {loaded.path} is a meta model; "
                             f"adapt it with --shots DIR")
    if not changing and not isinstance(loaded, Model):
        loaded.adapt()  # raises the explanation (already adapted; pass the meta model)
    reporter = lazy_reporter("adapting")
    try:
        if changing:
            adapted = loaded.update_classes(add=add, remove=remove or (), steps=steps, lr=lr, progress=reporter,
                                            safeguard=safeguard, colour=colour)
        else:
            adapted = loaded.adapt(shots, steps=steps, lr=lr, progress=reporter, safeguard=safeguard,
                                   colour="auto" if colour is None else colour)
    finally:
        reporter.close()
    adapted.save(str(out))
    info = adapted.adaptation
    counts = info["shots_per_class"]
    print(f"adapted {printable(os.path.basename(str(loaded.path)))} to {len(counts)} classes "
          f"({sum(counts.values())} images) in {adapted.seconds:.2f} s")
    width = max(len(c) for c in counts)
    for name, n in counts.items():
        print(f"  {printable(name):<{width}}  {n} shot{'s' if n != 1 else ''}")
    print(adaptation_summary(info))
    print(f"wrote {printable(out)}")  # escaped as predict's paths: an undecodable name must not fail after the write


def adaptation_summary(info: dict) -> str:
    """steps kept (of requested), their learning rates, the auto choice, support loss before -> after."""
    lrs = info["lrs"]
    if lrs and isinstance(lrs[0], list) and len({x for row in lrs for x in row}) > 1:  # learned: per tensor and step
        rates = "learned rates (mean per step " + ", ".join(f"{sum(row) / len(row):.3g}" for row in lrs) + ")"
    else:
        lrs = [row[0] if isinstance(row, list) else row for row in lrs]
        rates = f"lr {lrs[0]:g}" if lrs and len(set(lrs)) == 1 else ("lr " + ", ".join(f"{x:g}" for x in lrs) if lrs else "")
    kept = f"{info['steps']} of {info['steps_requested']}" if info["steps"] != info["steps_requested"] else info["steps"]
    line = f"{kept} step{'s' if info['steps_requested'] != 1 else ''}{' at ' + rates if rates else ''}"
    auto = info.get("auto")
    if auto:
        line += (f" (auto: {auto['note']})" if "note" in auto else
                 f" (auto: chose {auto['chosen']}, leave-one-shot-out accuracy "
                 + " / ".join(f"{100 * a:.0f}%" for a in auto["accuracy"]) + " after 0.." + str(len(auto["accuracy"]) - 1)
                 + " steps)")
    if info.get("rejected"):
        back = "the steps before it kept" if info["steps"] else "back to the start"
        line += f", step {info['rejected_step']['step']} rejected (it raised the loss: {back})"
    line = f"{line}; support loss {info['loss_before']:.4f} -> {info['loss_after']:.4f}"
    return line + colour_summary(info.get("colour"))


def colour_summary(report: dict | None) -> str:
    """'; colour: ...' for colour models (runtime/colour.py), '' for grey ones."""
    from ..runtime.colour import decision

    text = decision(report)
    return f"; colour: {text}" if text else ""


def _expand(inputs: List[Path]) -> list:
    from ..data.classes import folder_images

    paths = []
    for item in inputs:
        if item.is_dir():
            # as --data reads a dataset: linked subfolders followed, each folder once; hidden ones skipped
            candidates = [os.path.join(item, name) for name in folder_images(str(item))]
            found = sorted(p for p in candidates if os.path.isfile(p))
            for broken in sorted(p for p in candidates if os.path.islink(p) and not os.path.exists(p)):
                warn(f"{printable(broken)}: a symbolic link to a file that does not exist; skipped")
            if not found:
                raise FastadaptError(f"{item}: folder has no images (.png, .jpg, ...); pass image files or a folder of them")
            paths += found
        elif item.exists():
            paths.append(str(item))
        else:
            raise FastadaptError(f"{item}: no such image file or folder")
    return paths


@app.command(rich_help_panel="On the device")
def predict(
    images: List[Path] = typer.Argument(..., help="Image files, or folders searched recursively for images.",
                                        show_default=False),
    model: Path = typer.Option(..., "--model", help="An adapted model made by 'fastadapt adapt'.",
                               show_default=False),
    top: int = typer.Option(TOP, "--top", min=1, help="Show the N most likely classes for each image (the "
                            "Python API's predict(top=...) has the same default)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line: "
                                 '{"path", "label", "probability", "top": [{"label", "probability"}], "unknown", '
                                 '"score"} (strict JSON).'),
    as_csv: bool = typer.Option(False, "--csv", help="CSV with a header row: path, label, probability, unknown, "
                                "score, then top1_label, top1_probability ... up to --top (at most the model's "
                                "number of classes)."),
    unknown: bool = typer.Option(False, "--unknown", help="Answer 'unknown' for images that look like none of "
                                 "the classes: score below the model's calibrated threshold, stored when it was adapted "
                                 "(see 'fastadapt info'). The closest class is still shown."),
    unknown_threshold: Optional[float] = typer.Option(None, "--unknown-threshold", help="Like --unknown, with "
                                                      "this threshold on the score instead of the model's own "
                                                      "calibrated one, which --unknown uses (see 'unknown ... "
                                                      "threshold=' in 'fastadapt info MODEL'); higher rejects more."),
    trusted_key: Optional[List[str]] = typer.Option(None, "--trusted-key", help="Accept only bundles signed by this "
                                                    "Ed25519 public key (hex, from 'fastadapt keygen'); repeat for several. "
                                                    "FASTADAPT_TRUSTED_KEYS adds to them."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Also draw a contact sheet PNG: every image with "
                                         "its predicted label and probability."),
) -> None:
    """Classify images with an adapted model.

    Each image is predicted on its own (the answer never depends on the other images given); answers are printed as they come, 256 images at a time. Unreadable files are skipped with a warning (--json and --csv also get a record with an "error" for each). With --unknown, an image that looks like none of the classes is answered "unknown (closest: LABEL P%)".

    Example: fastadapt predict --model mine.fadapt photos/ --top 3 --json > predictions.jsonl
    """
    from ..runtime import load

    if as_json and as_csv:
        raise FastadaptError("--json and --csv: choose one output format")
    loaded = load(model, trusted_key)
    if sheet is not None:
        check_out(sheet, "--sheet", "predictions.png", inputs=[*images, model], suffix=".png")
    paths = _expand(images)
    threshold = unknown_threshold if unknown_threshold is not None else unknown
    loaded.predict([], top, threshold)  # refuses a bad --top or threshold now, before any image is read
    columns = min(top, len(loaded.classes))  # as text and --json: no columns past the classes
    out = sys.stdout  # the results' stream, also while a progress bar sends sys.stdout's prints to stderr
    # a bar only where nothing else shows the progress: plain text into a file or pipe (quiet with --json,
    # --csv, as evaluate --json is), on a terminal's stderr (lazy_reporter)
    reporter = None if as_json or as_csv or out.isatty() else lazy_reporter("predicting")
    pending = [_csv_line(_csv_columns(columns))] if as_csv else []
    answered, kept, results = 0, [], []  # kept, results: for --sheet only
    try:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            for path, result in zip(chunk, _predict_chunk(loaded, chunk, top, threshold)):
                if result is None:  # skipped, with a warning on stderr; text output has nothing more to say
                    if as_json or as_csv:
                        reason = _unreadable(path, loaded.preprocess) or "could not be read"
                        pending.append(_json_line(path, error=reason) if as_json else _csv_error(path, reason, columns))
                    continue
                answered += 1
                if as_json:
                    pending.append(_json_line(path, result))
                else:
                    pending.append(_csv_line(_csv_row(path, result, columns)) if as_csv else _text_line(path, result))
                if sheet is not None:
                    kept.append(path)
                    results.append(result)
            if answered:  # until an image is answered, the run may still end as an error with nothing printed
                for line in pending:  # a reader (or a stopped run) has every answer so far; each line flushed on
                    out.write(line)   # its own, so that Ctrl-C stops the output between lines (a pipe takes
                    out.flush()       # a write of up to 4 KiB whole), not in the middle of one
                pending = []
            if reporter is not None:
                reporter(start + len(chunk), len(paths))
    finally:
        if reporter is not None:
            reporter.close()
    if not answered:
        raise FastadaptError(f"{paths[0]}{' and the others' if len(paths) > 1 else ''}: no readable image to predict")
    if sheet is not None:
        from .sheet import contact_sheet

        contact_sheet(kept, results, str(sheet))
        print(f"wrote {printable(sheet)}", file=sys.stderr)  # stdout holds only the results


CHUNK = 256  # images per loaded.predict call: answers come out as they are made, memory stays bounded


def _predict_chunk(loaded, paths: list, top: int, threshold) -> list:
    """loaded.predict of ``paths``: a Prediction per image, None for each unreadable one (skipped with a
    warning; a chunk of only unreadable images is all None). Answers do not depend on the chunking: each image
    is predicted on its own. A polarity warning ("light strokes on a dark background") counts the images of its
    chunk."""
    return loaded.predict(paths, top, threshold, skip_unreadable=True)


def _unreadable(path: str, preprocess) -> str | None:
    """Why the image at ``path`` cannot be read (the skip warning's reason, without the path), or None."""
    import warnings

    from ..images import to_uint8

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # predict has warned already
        try:
            to_uint8(path, preprocess)
        except FastadaptError as exc:
            reason = str(exc)
            return reason[len(path) + 2:] if reason.startswith(f"{path}: ") else reason
    return None


def _text_line(path: str, result) -> str:
    answer = f"{printable(result.label)}\t{100 * result.probability:.1f}%"
    if result.unknown:
        answer = f"unknown (closest: {printable(result.label)} {100 * result.probability:.0f}%)"
    line = f"{printable(path)}\t{answer}"
    if len(result.top) > 1:
        line += "\t(" + ", ".join(f"{printable(lab)} {100 * p:.1f}%" for lab, p in result.top[1:]) + ")"
    return line + "\n"


def _json_line(path: str, result=None, error: str | None = None) -> str:
    """--json: the answer's object, or {"path", "error"} for a skipped image. A path that is not valid UTF-8
    holds Python's escapes of its bytes (\\udce9 for byte 0xE9; os.fsencode gives the bytes back)."""
    record = {"path": path, **(result.to_dict() if result is not None else {"error": error})}
    return json.dumps(record, allow_nan=False) + "\n"


def _csv_columns(top: int) -> list:
    """predict --csv's header: path, label, probability, unknown, score, ``top`` (label, probability) pairs,
    error (filled for a skipped image only)."""
    columns = ["path", "label", "probability", "unknown", "score"]
    for rank in range(1, top + 1):
        columns += [f"top{rank}_label", f"top{rank}_probability"]
    return columns + ["error"]


def _csv_row(path: str, result, top: int) -> list:
    """One answered image's row. Paths and labels are escaped as in the text output (printable), so an
    undecodable file name cannot fail the write."""
    row = [printable(path), printable(result.label), repr(result.probability), str(result.unknown).lower(),
           "" if result.score is None else repr(result.score)]  # full precision, as --json
    for rank in range(top):
        if rank < len(result.top):
            label, probability = result.top[rank]
            row += [printable(label), repr(probability)]
        else:
            row += ["", ""]
    return row + [""]


def _csv_error(path: str, reason: str, top: int) -> str:
    """A skipped image's row: its path, empty answer columns, and why in the last column (error)."""
    return _csv_line([printable(path)] + [""] * (len(_csv_columns(top)) - 2) + [printable(reason)])


def _csv_line(row: list) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()
