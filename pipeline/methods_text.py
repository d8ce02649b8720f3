"""A run's methods paragraph and its references, for a paper's methods section.

    text, bibtex = methods_section(results, samples={"all": 4096}, n_classes=2)

The paragraph names each estimator entry in words with its parameters and citations, the
intervals and shuffle baselines it carries, what the figures average over, and the software
that computed it; `references.bib` holds the cited works. The report shows both and writes them
beside index.html (`methods.txt`, `references.bib`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import xarray as xr

from pipeline.figures import METHOD_WORDS
from pipeline.sweeps import Sweep, disjoint_sweeps

# key -> (BibTeX entry type, fields); the works the built-in methods implement
REFERENCES: dict[str, tuple[str, dict[str, str]]] = {
    "shwartzziv2017": ("article", {
        "author": "Shwartz-Ziv, Ravid and Tishby, Naftali", "year": "2017",
        "title": "Opening the Black Box of Deep Neural Networks via Information",
        "journal": "arXiv preprint arXiv:1703.00810"}),
    "saxe2018": ("inproceedings", {
        "author": "Saxe, Andrew M. and Bansal, Yamini and Dapello, Joel and Advani, Madhu and "
                  "Kolchinsky, Artemy and Tracey, Brendan D. and Cox, David D.", "year": "2018",
        "title": "On the Information Bottleneck Theory of Deep Learning",
        "booktitle": "International Conference on Learning Representations (ICLR)"}),
    "kolchinsky2017": ("article", {
        "author": "Kolchinsky, Artemy and Tracey, Brendan D.", "year": "2017",
        "title": "Estimating Mixture Entropy with Pairwise Distances", "journal": "Entropy",
        "volume": "19", "number": "7", "pages": "361", "doi": "10.3390/e19070361"}),
    "giraldo2015": ("article", {
        "author": "Sanchez Giraldo, Luis Gonzalo and Rao, Murali and Principe, Jose C.", "year": "2015",
        "title": "Measures of Entropy From Data Using Infinitely Divisible Kernels",
        "journal": "IEEE Transactions on Information Theory", "volume": "61", "number": "1",
        "pages": "535--548", "doi": "10.1109/TIT.2014.2370058"}),
    "wickstrom2019": ("article", {
        "author": "Wickstr{\\o}m, Kristoffer and L{\\o}kse, Sigurd and Kampffmeyer, Michael and Yu, "
                  "Shujian and Principe, Jose C. and Jenssen, Robert", "year": "2019",
        "title": "Information Plane Analysis of Deep Neural Networks via Matrix-Based "
                 "{R}enyi's Entropy and Tensor Kernels",
        "journal": "arXiv preprint arXiv:1909.11396"}),
    "kraskov2004": ("article", {
        "author": "Kraskov, Alexander and St{\\\"o}gbauer, Harald and Grassberger, Peter", "year": "2004",
        "title": "Estimating Mutual Information", "journal": "Physical Review E", "volume": "69",
        "number": "6", "pages": "066138", "doi": "10.1103/PhysRevE.69.066138"}),
    "kozachenko1987": ("article", {
        "author": "Kozachenko, L. F. and Leonenko, N. N.", "year": "1987",
        "title": "Sample Estimate of the Entropy of a Random Vector",
        "journal": "Problems of Information Transmission", "volume": "23", "number": "2",
        "pages": "95--101"}),
    "butakov2024": ("inproceedings", {
        "author": "Butakov, Ivan and Tolmachev, Alexander and Malanchuk, Sofia and Neopryatnaya, Anna "
                  "and Frolov, Alexey and Andreev, Kirill", "year": "2024",
        "title": "Information Bottleneck Analysis of Deep Neural Networks via Lossy Compression",
        "booktitle": "International Conference on Learning Representations (ICLR)"}),
    "ince2017": ("article", {
        "author": "Ince, Robin A. A. and Giordano, Bruno L. and Kayser, Christoph and Rousselet, "
                  "Guillaume A. and Gross, Joachim and Schyns, Philippe G.", "year": "2017",
        "title": "A Statistical Framework for Neuroimaging Data Analysis Based on Mutual "
                 "Information Estimated via a {G}aussian Copula",
        "journal": "Human Brain Mapping", "volume": "38", "number": "3", "pages": "1541--1573",
        "doi": "10.1002/hbm.23471"}),
    "oord2018": ("article", {
        "author": "van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol", "year": "2018",
        "title": "Representation Learning with Contrastive Predictive Coding",
        "journal": "arXiv preprint arXiv:1807.03748"}),
    "nguyen2010": ("article", {
        "author": "Nguyen, XuanLong and Wainwright, Martin J. and Jordan, Michael I.", "year": "2010",
        "title": "Estimating Divergence Functionals and the Likelihood Ratio by Convex Risk Minimization",
        "journal": "IEEE Transactions on Information Theory", "volume": "56", "number": "11",
        "pages": "5847--5861", "doi": "10.1109/TIT.2010.2068870"}),
    "belghazi2018": ("inproceedings", {
        "author": "Belghazi, Mohamed Ishmael and Baratin, Aristide and Rajeswar, Sai and Ozair, Sherjil "
                  "and Bengio, Yoshua and Courville, Aaron and Hjelm, R. Devon", "year": "2018",
        "title": "Mutual Information Neural Estimation",
        "booktitle": "International Conference on Machine Learning (ICML)", "pages": "531--540"}),
    "song2020": ("inproceedings", {
        "author": "Song, Jiaming and Ermon, Stefano", "year": "2020",
        "title": "Understanding the Limitations of Variational Mutual Information Estimators",
        "booktitle": "International Conference on Learning Representations (ICLR)"}),
    "achille2019": ("article", {
        "author": "Achille, Alessandro and Paolini, Giovanni and Soatto, Stefano", "year": "2019",
        "title": "Where is the Information in a Deep Neural Network?",
        "journal": "arXiv preprint arXiv:1905.12213"}),
}
METHOD_REFERENCES = {"binning": ["shwartzziv2017"], "kde": ["kolchinsky2017", "saxe2018"],
                     "renyi": ["giraldo2015", "wickstrom2019"], "ksg": ["kraskov2004"],
                     "compression": ["butakov2024", "kozachenko1987", "kraskov2004"],
                     "gaussian": ["ince2017"], "fisher": ["achille2019"]}
BOUND_REFERENCES = {"infonce": ["oord2018"], "nwj": ["nguyen2010", "belghazi2018"], "smile": ["song2020"]}
SHOWN = {"method", "confidence", "n_resamples", "null", "uncertainty", "device"}  # said apart or not at all


def entry_references(method: str, params: dict[str, Any]) -> list[str]:
    """The keys of the works an entry's method implements (none for a method of one's own)."""
    if method == "variational":
        return BOUND_REFERENCES.get(str(params.get("bound")), [])
    return METHOD_REFERENCES.get(method, [])


def _cite(keys: list[str]) -> str:
    return f" [{', '.join(keys)}]" if keys else ""


def entry_sentence(name: str, method: str, params: dict[str, Any], label: str) -> str:
    """One entry in words: its label, citations, parameters, interval and shuffle baseline."""
    return _sentence(f"'{name}'", method, params, label)


def sweep_sentence(sweep: Sweep, tables: dict[str, dict[str, Any]]) -> str:
    """A sweep's entries in one sentence: the method, the swept parameter's values in order,
    then what the entries share (written once)."""
    values = [json.dumps(tables[entry][sweep.parameter]) for entry in sweep.entries]
    shared = {k: v for k, v in tables[sweep.entries[0]].items() if k != sweep.parameter}
    label = f"{METHOD_WORDS.get(sweep.method, sweep.method)} at {sweep.parameter} = {_and(values)}"
    return _sentence(_and([f"'{entry}'" for entry in sweep.entries]), sweep.method, shared, label)


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _sentence(subject: str, method: str, params: dict[str, Any], label: str) -> str:
    shown = ", ".join(f"{key} = {json.dumps(value)}" for key, value in sorted(params.items())
                      if key not in SHOWN and value is not None)
    sentence = f"{subject}: {label}{_cite(entry_references(method, params))}"
    sentence += f" ({shown})" if shown else ""
    uncertainty = params.get("uncertainty", "none")
    if uncertainty != "none":
        how = ("over the estimator's batches" if uncertainty == "batches"
               else f"by {uncertainty} with {params.get('n_resamples')} resamples")
        sentence += f"; {100 * float(params.get('confidence', 0.9)):.0f}% intervals per cell {how}"
    if params.get("null"):
        sentence += "; a shuffle baseline per cell (the same estimator on shuffled pairs)"
    return sentence + "."


def methods_section(results: xr.Dataset, samples: dict[str, int], n_classes: int | None,
                    intervals: bool = True) -> tuple[str, str]:
    """The methods paragraph of a results store and the BibTeX of the works it cites.

    `samples`: the recorded samples of each split estimated on; `n_classes`: the labels' classes
    (None for an archive without labels); `intervals`: whether the figures draw intervals."""
    from pipeline.figures import entry_label
    from pipeline.results import entry_parameters

    cited, sentences = [], []
    tables = {str(name): entry_parameters(results, str(name)) for name in results.estimator.values}
    order = list(tables)  # a sweep's sentence stands where the first of its entries does
    sweeps = {min(sweep.entries, key=order.index): sweep for sweep in disjoint_sweeps(results)}
    told = {entry for sweep in sweeps.values() for entry in sweep.entries}
    for name, params in tables.items():
        method = str(results.method.sel(estimator=name).values)
        cited += entry_references(method, params)
        if name in sweeps:
            sentences.append(sweep_sentence(sweeps[name], tables))
        elif name not in told:
            sentences.append(entry_sentence(name, method, params, entry_label(results, name)))
    epochs = results.epoch.values
    splits = ", ".join(f"{split} ({samples.get(str(split), '?')} samples)" for split in results.split.values)
    layers = [str(layer) for layer in results.layer.values]
    text = [f"Mutual information was estimated for each of {len(layers)} recorded layers "
            f"({', '.join(layers)}) at {len(epochs)} snapshot epochs ({_epoch_range(epochs)}) of "
            f"{results.sizes['seed']} training seed(s), on the recorded samples of each split: {splits}. "
            "I(X;T) pairs each layer with the network's input, I(T;Y) with the label"
            + (f" ({n_classes} classes)." if n_classes else "; the archive holds no labels.")]
    text.append("Estimator entries: " + " ".join(sentences))
    if "fisher_trace" in results and np.isfinite(results.fisher_trace).any():
        cited.append("achille2019")
        text.append("The information in the weights is the trace of the Fisher information of each "
                    "layer's parameters [achille2019].")
    text.append(_points(results.sizes["seed"], intervals))
    text.append(_software(results.attrs))
    return " ".join(text), bibtex(list(dict.fromkeys(cited)))


def _points(n_seeds: int, intervals: bool) -> str:
    if n_seeds == 1:
        return "Points in the figures are the single seed's values" + (
            ", with each cell's own interval where its entry computes one." if intervals else ".")
    return (f"Points in the figures are means over the {n_seeds} seeds" + (
        " with 90% t intervals over seeds, or a single seed's value with its cell's own interval "
        "where only one seed holds the cell." if intervals else " (drawn without intervals)."))


def _epoch_range(epochs: np.ndarray) -> str:
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]} to {epochs[-1]}"


def _revision_words(revision: str) -> str:
    """A provenance revision in words: its first 12 characters, and whether the checkout it ran
    from had uncommitted changes (`+dirty`), which the commit alone does not reproduce."""
    changed = " with uncommitted changes" if revision.endswith("+dirty") else ""
    return revision.removesuffix("+dirty")[:12] + changed


def _software(attrs: dict[str, Any]) -> str:
    """The versions of the store's last run; every commit whose runs computed cells, where the
    store's history (one line per `make estimate` run) names more than one, and every change of
    package versions between its runs."""
    versions = json.loads(attrs.get("versions", "{}"))
    packages = ", ".join(f"{name} {versions[name]}" for name in ("torch", "numpy", "scipy")
                         if name in versions)
    revisions = re.findall(r"\(git ([0-9a-f]+(?:\+dirty)?)", attrs.get("history", ""))
    commits = list(dict.fromkeys(map(_revision_words, revisions)))
    commit = (f"commits {', '.join(commits)}, whose runs the store's history lists" if len(commits) > 1
              else f"commit {_revision_words(str(attrs.get('git_revision', '?')))}")
    changes = re.findall(r"versions changed since the previous run: ([^)]*)\)", attrs.get("history", ""))
    earlier = (" Package versions changed between the store's runs (" + "; then ".join(changes) + ")."
               if changes else "")
    return (f"Computed with infoplane {versions.get('infoplane', '?')} ({commit}; Python "
            f"{versions.get('python', '?')}{', ' + packages if packages else ''}).{earlier}")


def bibtex(keys: list[str]) -> str:
    """BibTeX entries of `keys`, in that order."""
    entries = []
    for key in keys:
        kind, fields = REFERENCES[key]
        body = ",\n".join(f"  {field} = {{{value}}}" for field, value in fields.items())
        entries.append(f"@{kind}{{{key},\n{body}\n}}")
    return "\n\n".join(entries) + ("\n" if entries else "")
