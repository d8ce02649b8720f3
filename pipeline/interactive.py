"""Interactive information planes and MI curves for the HTML report (Plotly, offline).

    from pipeline.interactive import interactive_sections
    divs = interactive_sections(results)    # {"planes": "<div ...>", "curves": "<div ...>"}

Hovering a point reads its layer, epoch, seed mean and interval; clicking a legend entry toggles
a layer; the menu switches estimator entry and split. The report loads `plotly.min.js` from beside
index.html (`write_plotly_js`), so it reads offline. The matplotlib PNG/PDF figures remain the
ones for papers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from pipeline.figures import (
    EPOCH_LABEL,
    SPLIT_WORDS,
    entry_label,
    epoch_ticks,
    plane_bands,
    plane_views,
    views_with,
)

LEGEND = {"orientation": "h", "y": -0.15, "x": 0}  # below the axes: the colour bar keeps the right
HOVER = ("<b>%{fullData.name}</b>, epoch %{customdata[0]}<br>I(X;T) %{x:.3f} bits "
         "[%{customdata[1]:.3f}, %{customdata[2]:.3f}]<br>I(T;Y) %{y:.3f} bits "
         "[%{customdata[3]:.3f}, %{customdata[4]:.3f}]<extra>%{meta}</extra>")


def _error(band: xr.Dataset) -> dict:
    """Plotly error bars from lo/hi (clipped at the point: a bootstrap interval may miss it)."""
    mean = band["mean"].values
    return {"type": "data", "symmetric": False, "thickness": 0.6, "width": 0,
            "array": np.clip(band.hi.values - mean, 0, None),
            "arrayminus": np.clip(mean - band.lo.values, 0, None)}


def _menu(views: list[tuple[str, str]], per_view: int, results: xr.Dataset) -> list[dict]:
    buttons = []
    for v, (estimator, split) in enumerate(views):
        visible = [v * per_view <= i < (v + 1) * per_view for i in range(len(views) * per_view)]
        buttons.append({"label": f"{entry_label(results, estimator)}; {SPLIT_WORDS.get(split, split)}",
                        "method": "update", "args": [{"visible": visible}]})
    return [{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.12, "yanchor": "bottom"}]


def planes_figure(results: xr.Dataset) -> go.Figure:
    """One trace per layer and (entry, split) view, the first view shown, a menu for the rest."""
    views = plane_views(results)
    layers = [str(name) for name in results.layer.values]
    fig = go.Figure()
    for v, (estimator, split) in enumerate(views):
        epochs, xt, ty, _ = plane_bands(results, estimator, split)
        for layer in layers:
            x, y = xt.sel(layer=layer), ty.sel(layer=layer)
            data = np.stack([epochs, x.lo, x.hi, y.lo, y.hi], axis=-1)
            fig.add_trace(go.Scatter(
                x=x["mean"].values, y=y["mean"].values, name=layer, legendgroup=layer, mode="lines+markers",
                visible=v == 0, customdata=data, meta=estimator, hovertemplate=HOVER,
                line={"width": 0.8}, error_x=_error(x), error_y=_error(y),
                marker={"color": np.log10(epochs + 1), "colorscale": "Viridis", "size": 7,
                        "colorbar": _epoch_colourbar(results.epoch.values) if layer == layers[-1] else None}))
    fig.update_layout(title={"text": "Information plane (mean over seeds, 90% intervals)", "y": 0.98},
                      xaxis_title="I(X;T) (bits)", yaxis_title="I(T;Y) (bits)", legend=LEGEND,
                      updatemenus=_menu(views, len(layers), results), height=600,
                      margin={"t": 110}, template="plotly_white")
    return fig


def curves_figure(results: xr.Dataset, variable: str = "I_XT") -> go.Figure:
    """`variable` against epochs trained, one trace per layer and view that holds it, with a
    menu of those views."""
    views = views_with(results, variable)
    layers = [str(name) for name in results.layer.values]
    fig = go.Figure()
    quantity = {"I_XT": "I(X;T)", "I_TY": "I(T;Y)"}[variable]
    for v, (estimator, split) in enumerate(views):
        epochs, xt, ty, _ = plane_bands(results, estimator, split)
        band = xt if variable == "I_XT" else ty
        for layer in layers:
            line = band.sel(layer=layer)
            fig.add_trace(go.Scatter(
                x=np.log10(epochs + 1), y=line["mean"].values, name=layer, mode="lines+markers",
                visible=v == 0, customdata=epochs,
                error_y=_error(line), meta=estimator, marker={"size": 4},
                hovertemplate=f"<b>%{{fullData.name}}</b>, epoch %{{customdata}}<br>{quantity} "
                              "%{y:.3f} bits<extra>%{meta}</extra>"))
    fig.update_layout(title={"text": f"{quantity} against epochs trained (mean over seeds, 90% intervals)",
                             "y": 0.98}, legend=LEGEND,
                      xaxis=_epoch_axis(results.epoch.values), yaxis_title=f"{quantity} (bits)",
                      updatemenus=_menu(views, len(layers), results), height=460, margin={"t": 110},
                      template="plotly_white")
    return fig


def _epoch_axis(epochs: np.ndarray) -> dict:
    """Epochs trained on a log(1 + epoch) axis labelled in epochs (0 stays visible)."""
    ticks = epoch_ticks(max(1, epochs.max()))
    return {"title": EPOCH_LABEL, "tickvals": np.log10(np.asarray(ticks) + 1).tolist(),
            "ticktext": [str(t) for t in ticks]}


def _epoch_colourbar(epochs: np.ndarray) -> dict:
    axis = _epoch_axis(epochs)
    return {"title": "epochs trained", "tickvals": axis["tickvals"], "ticktext": axis["ticktext"]}


def interactive_sections(results: xr.Dataset) -> dict[str, str]:
    """HTML <div>s (no script tag of the library: the report loads plotly.min.js once)."""
    figures = {}
    if plane_views(results):
        figures["planes"] = planes_figure(results)
    for name, variable in (("curves", "I_XT"), ("curves_ty", "I_TY")):
        if views_with(results, variable):
            figures[name] = curves_figure(results, variable)
    return {name: fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"interactive-{name}")
            for name, fig in figures.items()}


def write_plotly_js(out_dir: Path) -> Path:
    """plotly.min.js beside the report, so it reads offline."""
    from plotly.offline import get_plotlyjs

    path = out_dir / "plotly.min.js"
    path.write_text(get_plotlyjs())
    return path
