"""The run's HTML report: findings summary, contents, captioned figures, readable parameters.

    from pipeline.report_html import write_report    # called by the figures stage
    write_report(out_dir, run, figures, config, attrs, estimators, messages, summary, accuracy)

One file, `index.html`, beside the figures it shows (PNG, each linked to its vector PDF) and the
copy of plotly.min.js its interactive planes load: nothing is fetched, it reads offline. Every
figure has a caption saying what it shows, how to read it and which parameters made it.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from pipeline.figure_files import FORMATS

CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:0 1em;"
       "line-height:1.45}img{max-width:100%}figure{margin:2em 0}figcaption{font-size:0.9em;"
       "color:#333}table{border-collapse:collapse;margin:0.5em 0;font-size:0.85em}td,th{border:"
       "1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}"
       ".muted{color:#777}")

CAPTIONS = {  # figure name prefix: (what it shows, how to read it)
    "plane_": ("The information plane: each marker is one layer (shape: see the legend) at one "
               "snapshot, placed at the mean over seeds of I(X;T) and I(T;Y) and coloured by epochs "
               "trained; thin lines join the layers of one snapshot.",
               "Moving right: the layer carries more about the input; up: more about the label. A "
               "late move to the left is what the literature calls compression. Grey bars: 90% "
               "intervals of the seed mean (or one seed's own interval), cut by the axes below zero "
               "and past log2 of the samples or H(Y); grey floors: the shuffle baselines, values "
               "within them are estimator bias; hollow markers: saturated values, near H(X) or "
               "H(Y), which carry no dynamics."),
    "dpi_": ("Cells where the data-processing inequality I(X;T_l) >= I(X;T_l+1) fails for the seed "
             "mean, per adjacent layer pair (rows) and snapshot (columns).",
             "A deterministic network cannot gain information about X in deeper layers: red cells "
             "are estimator artefacts (noise, binning or kernel choices), not properties of the "
             "network."),
    "mi_vs_epoch_": ("I(X;T) (left) and I(T;Y) (right; absent for an archive without labels) of "
                     "every layer against epochs trained, mean over seeds with its 90% interval as a "
                     "band (cut where it reaches below zero).",
                     "Fitting shows as rising curves, compression as I(X;T) falling while I(T;Y) "
                     "holds; a band wider than a change means the change is within the noise."),
    "comparison": ("Every estimator entry and split as one small information plane; hollow markers: "
                   "saturated values, as in the planes.",
                   "Each panel has its own ranges: compare the shapes of the trajectories, not the "
                   "numbers across panels; entries disagree where the shapes differ."),
    "sweep_": ("A parameter sweep: entries of one method differing in one parameter alone (x axis); "
               "each layer's I(X;T) and I(T;Y) at the last snapshot (seed means with their "
               "intervals) and the drop of I(X;T) from its peak.",
               "A conclusion that holds across the sweep is the network's; one that comes and goes "
               "with the setting is the estimator's. On the drop panel a filled marker is a "
               "compression the findings call beyond the noise, a hollow one a drop they do not "
               "call, a cross one they cannot judge (no interval)."),
    "training": ("Loss and accuracy on the training and test samples against epochs trained, mean "
                 "over seeds, as far as the archive's history records them.",
                 "Where the test loss is recorded, the dashed line marks early stopping, the epoch of "
                 "the lowest test loss; it is also starred in the information planes."),
    "gradients": ("Per layer, the norm of the mean gradient (signal) and the standard deviation of "
                  "the mini-batch gradients (noise) against epochs trained.",
                  "Shwartz-Ziv and Tishby's drift-to-diffusion transition is where the signal falls "
                  "below the noise for good (red line)."),
    "fisher": ("The trace of the Fisher information of each layer's weights against epochs trained.",
               "Achille et al. read a rise then fall as the network first memorising then "
               "forgetting information in its weights."),
}


def _caption(name: str, estimators: dict[str, str]) -> str:
    prefix = next((p for p in CAPTIONS if name.startswith(p)), None)
    if prefix is None:
        return ""
    what, how = CAPTIONS[prefix]
    text = f"<p><b>{html.escape(what)}</b> {html.escape(how)}</p>"
    entry = _entry_of(name, prefix, estimators)
    if entry is not None:
        text += f"<p>Estimator entry <code>{html.escape(entry)}</code>:</p>" + _table(
            json.loads(estimators[entry]))
    return text


def _entry_of(name: str, prefix: str, estimators: dict[str, str]) -> str | None:
    """The estimator entry a figure's file name holds (plane_<entry>_<split>, mi_vs_epoch_<entry>)."""
    rest = name[len(prefix):]
    matches = [e for e in estimators if rest == e or rest.startswith(e + "_")]
    return max(matches, key=len) if matches else None


def _value(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _table(mapping: dict[str, Any], header: tuple[str, str] = ("parameter", "value")) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_value(v)}</td></tr>"
                   for k, v in _flatten(mapping).items())
    return f"<table><tr><th>{header[0]}</th><th>{header[1]}</th></tr>{rows}</table>"


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys; JSON held in strings (the store's attributes) unpacked."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _rows(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_value(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(value: float, why: str) -> str:
    """A `compresses` verdict in words; `why` it is undetermined where it is (NaN)."""
    return f"undetermined ({why})" if math.isnan(value) else ("yes" if value else "no")


def _share(value: float, missing: str) -> str:
    return missing if math.isnan(value) else f"{value:.0%}"


def _disagreement(d: dict[str, Any]) -> str:
    text = (f"{html.escape(d['layer'])} ({html.escape(d['split'])}): {', '.join(d['compress'])} compress, "
            f"{', '.join(d['do_not'])} do not")
    if d["distrusted"]:
        text += f" ({', '.join(d['distrusted'])}: every cell flagged by its diagnostic, left out)"
    return text


def summary_html(summary: dict[str, Any] | None, accuracy: dict[str, float]) -> str:
    """The findings summary: accuracy, compression per entry and layer, DPI, saturation, distrusted
    cells, cells at their shuffle baselines, disagreements."""
    parts = ["<h2 id='summary'>Findings summary</h2>"]
    if accuracy:
        parts.append("<p>Final accuracy, mean over seeds: " + ", ".join(
            f"{html.escape(k)} {v:.3f}" for k, v in accuracy.items()) + ".</p>")
    if not summary or not summary["layers"]:
        parts.append("<p>No information-plane results yet: run <code>make estimate</code>.</p>")
        return "\n".join(parts)
    parts.append("<p>Compression per hidden layer (<code>pipeline.findings.compresses</code>): "
                 "beyond the noise when the 90% interval of the seed mean at the peak of I(X;T) lies "
                 "above the one at the last epoch, the peak located on every other snapshot and its "
                 "interval read on the next one (so that the noise that made a snapshot the highest "
                 "is not counted as a drop); the 5% rule only asks for a drop of 5% of the "
                 "peak.</p>")
    parts.append(_rows(["entry", "split", "layer", "compresses beyond the noise", "5% rule",
                        "drop from the peak (bits, mean ± sd over seeds)"],
                       [[r["entry"], r["split"], r["layer"],
                         _verdict(r["beyond_noise"], "saturated at the peak and the end"
                                  if r.get("saturated") else "no interval"),
                         _verdict(r["fraction"], "no values"), f"{r['drop_mean']:.3f} ± {r['drop_std']:.3f}"]
                        for r in summary["layers"]]))
    parts.append(_rows(["entry", "split", "DPI holds (share of cells)", "saturated cells (share)",
                        "cells its estimator distrusts (share; docs/estimators.md, Diagnostics)",
                        "cells not above their shuffle baseline, I(X;T) / I(T;Y) (share)"],
                       [[r["entry"], r["split"], _share(r["dpi_holds"], "n/a"),
                         _share(r["saturated"], "not stored"),
                         _share(r.get("distrusted", math.nan), "no diagnostic"),
                         f"{_share(r.get('at_null_xt', math.nan), 'no baseline')} / "
                         f"{_share(r.get('at_null_ty', math.nan), 'no baseline')}"]
                        for r in summary["entries"]]))
    if summary["disagreements"]:
        parts.append("<p>Entries disagree on compression (beyond the noise; by the 5% rule where "
                     "that is undetermined) in: " + "; ".join(map(_disagreement, summary["disagreements"]))
                     + ".</p>")
    else:
        left_out = summary.get("abstained", [])
        parts.append("<p>The entries agree on every hidden layer (each by its verdict beyond the noise, "
                     "by the 5% rule where that is undetermined)" + (
                         f"; {', '.join(map(html.escape, left_out))} cast no vote on the layers whose "
                         "every cell its diagnostic flags" if left_out else "") + ".</p>")
    return "\n".join(parts)


def write_report(out_dir: Path, run: str, figures: list[str], config: dict[str, Any],
                 results_attrs: dict[str, Any], estimators: dict[str, str], messages: list[str],
                 summary: dict[str, Any] | None = None, accuracy: dict[str, float] | None = None,
                 interactive: dict[str, str] | None = None, methods: tuple[str, str] | None = None,
                 formats: tuple[str, ...] = FORMATS) -> Path:
    """index.html: summary, contents, the interactive views (`interactive`: Plotly divs, with
    plotly.min.js beside the file), every figure captioned with links to its vector files (the
    `formats` beside the PNG), the methods paragraph and its BibTeX (`methods`), then parameters
    and provenance."""
    script = "<script src='plotly.min.js'></script>" if interactive else ""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>infoplane: "
             f"{html.escape(run)}</title><style>{CSS}</style>{script}</head><body>",
             f"<h1>infoplane report: {html.escape(run)}</h1>",
             summary_html(summary, accuracy or {})]
    if messages:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in messages) + "</ul>")
    first = "<li><a href='#interactive'>interactive planes and curves</a></li>" if interactive else ""
    parts.append("<h2 id='contents'>Contents</h2><ol>" + first + "".join(
        f"<li><a href='#{html.escape(n)}'>{html.escape(n)}</a></li>" for n in figures)
        + ("<li><a href='#methods'>methods and references</a></li>" if methods else "")
        + "<li><a href='#entries'>estimator entries</a></li><li><a href='#config'>config</a></li>"
        "<li><a href='#provenance'>provenance</a></li></ol>")
    if interactive:
        parts.append("<h2 id='interactive'>Interactive planes and curves</h2><p>Hover a point for its "
                     "layer, epoch, seed mean and 90% interval; click a layer in the legend to hide it; "
                     "the menu switches estimator entry and split.</p>" + "".join(interactive.values()))
    parts.append("<h2>Figures</h2>")
    vector = [f for f in formats if f != "png"]
    for name in figures:
        links = ", ".join(f"<a href='{name}.{f}'>{html.escape(name)}.{f}</a>" for f in vector)
        parts.append(f"<figure id='{html.escape(name)}'><h3>{html.escape(name)}</h3>"
                     f"<a href='{name}.{(vector or ['png'])[0]}'><img src='{name}.png' "
                     f"alt='{html.escape(name)}'></a><figcaption>{_caption(name, estimators)}"
                     + (f"<p class='muted'>Vector version: {links}</p>" if vector else "")
                     + "</figcaption></figure>")
    if methods:
        parts.append("<h2 id='methods'>Methods and references</h2><p>For a paper's methods section "
                     "(also in <a href='methods.txt'>methods.txt</a> and <a href='references.bib'>"
                     f"references.bib</a>):</p><p>{html.escape(methods[0])}</p>"
                     f"<pre>{html.escape(methods[1])}</pre>")
    parts.append("<h2 id='entries'>Estimator entries</h2>" + "".join(
        f"<h3>{html.escape(e)}</h3>{_table(json.loads(p))}" for e, p in estimators.items()))
    parts.append(f"<h2 id='config'>Config</h2>{_table(config, ('key', 'value'))}")
    parts.append(f"<h2 id='provenance'>Provenance</h2>{_table(results_attrs, ('key', 'value'))}"
                 "</body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts))
    return path
