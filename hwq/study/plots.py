"""Figures of the paper, drawn from arrays; each function returns its Figure and writes a PNG.

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas), never pyplot:
no global state, no GUI backend, nothing to ``show``. A PNG is written to a temporary file in
the target folder and moved into place with ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hwq.errors import UsageError
from hwq.files.atomic import atomic_path
from hwq.study.analysis import geometry


def _figure(ncols: int = 1, width: float = 4.5, height: float = 3.6):
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, np.atleast_1d(fig.subplots(1, ncols, squeeze=False)[0])


def save_png(fig: Figure, path) -> Figure:
    """Write ``fig`` to ``path`` atomically (temporary file + os.replace); None writes nothing."""
    if path is None:
        return fig
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return fig


def plot_simplex_histograms(samples: dict, path, *, bins: int = 60) -> Figure:
    """Fig. 2: density histogram of nearest-face distances per (q, n) against f(eps).

    h = s / sqrt(2 n (n+1)) with s = sqrt(n) 2^-q; f(eps) = (n / h) (1 - eps/h)^(n-1).
    """
    fig, axes = _figure(len(samples))
    for ax, ((q, n), d) in zip(axes, samples.items(), strict=True):
        h = float(geometry.inradius(geometry.edge_length(q, n), n))
        ax.hist(d, bins=bins, range=(0, h), density=True, color="0.75", label="Monte Carlo")
        e = np.linspace(0, h, 400)
        ax.plot(e, geometry.density(e, h, n), "k-", lw=1.5, label="model f(ε)")
        ax.set(title=f"q = {q}, n = {n}", xlabel="distance to nearest face ε", ylabel="density")
        ax.legend()
    return save_png(fig, path)


def _representative(eps: np.ndarray, count: int = 8) -> np.ndarray:
    """About ``count`` eps indices, geometrically spaced: the small strengths matter most."""
    if eps.size <= count:
        return np.arange(eps.size)
    picks = np.round(np.geomspace(1, eps.size - 1, count - 1)).astype(int)
    return np.unique(np.concatenate([[0], picks]))


def _curve_at(values: np.ndarray, eps: np.ndarray, eps_c: float) -> np.ndarray:
    """values[:, k] interpolated along eps at eps_c, for every row (bit width)."""
    return np.array([np.interp(eps_c, eps, row) for row in values])


def _check_shape(name: str, array: np.ndarray, shape: tuple) -> None:
    if array.shape != shape:
        raise UsageError(f"{name} has shape {array.shape}, expected {shape}")


def _bits_panel(ax, bits, eps, mean, std, eps_c, picks) -> None:
    """One activation: mean[b, k] vs bits for the picked k, std band, critical curve."""
    for color, k in zip(colormaps["viridis"](np.linspace(0, 0.9, picks.size)), picks, strict=True):
        ax.plot(bits, mean[:, k], "o-", ms=3, color=color, label=f"ε = {eps[k]:.3g}")
        if std is not None:
            band = (mean[:, k] - std[:, k], mean[:, k] + std[:, k])
            ax.fill_between(bits, *band, color=color, alpha=0.15, lw=0)
    if eps_c is not None:
        curve = _curve_at(mean, eps, eps_c)
        ax.plot(bits, curve, "k--*", lw=2.5, ms=8, label=f"critical ε = {eps_c:.3g}")


def plot_accuracy_vs_bits(
    bits, eps, acc_mean, acc_std, activations, critical, path, title=""
) -> Figure:
    """Figs. 3/6: accuracy vs bits, one panel per activation, one curve per strength.

    ``acc_mean``/``acc_std``: shape (n_activations, n_bits, n_eps); ``acc_std`` may be None.
    About 8 strengths, geometrically spaced over ``eps``, are drawn. ``critical[activation]``:
    an eps (or an object with ``eps_linf``, e.g. a CriticalStrength) or None; that curve is
    drawn bold and dashed, interpolated along eps when it falls between simulated strengths.
    """
    bits, eps, mean = np.asarray(bits), np.asarray(eps, float), np.asarray(acc_mean, float)
    shape = (len(activations), bits.size, eps.size)
    _check_shape("acc_mean", mean, shape)
    std = None if acc_std is None else np.asarray(acc_std, float)
    if std is not None:
        _check_shape("acc_std", std, shape)
    picks = _representative(eps)
    fig, axes = _figure(len(activations), height=4.6)
    for a, (ax, act) in enumerate(zip(axes, activations, strict=True)):
        eps_c = getattr(critical.get(act), "eps_linf", critical.get(act))
        _bits_panel(ax, bits, eps, mean[a], None if std is None else std[a], eps_c, picks)
        name = f"{title} — {act}" if title else act
        ax.set(title=name, xlabel="weight bits q", ylabel="test accuracy", xticks=bits)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return save_png(fig, path)


def _bound_curves(eps, bits, bound, n_features):
    """(eps grid, array (n_bits, grid)) for the model bound, dense where it drops.

    The model bound ((1 - eps sqrt(n) / h)^n) decays on the scale h / n^(3/2) and reaches 0 at
    h / sqrt(n); the grid is geometric below each of those zeros.
    """
    if bound is not None and not callable(bound):
        return eps, np.asarray(bound, float)
    top = max(float(eps.max()), 1e-12)
    parts = [eps, [0.0], np.geomspace(top * 1e-6, top, 2000)]
    if bound is None:
        h = geometry.inradius(geometry.edge_length(bits, n_features), n_features)
        parts += [z * np.geomspace(1e-6, 1, 300) for z in h / np.sqrt(n_features)]
    grid = np.unique(np.concatenate(parts))
    if bound is None:
        curves = [geometry.relative_accuracy_bound_linf(grid, n_features, q) for q in bits]
    else:
        curves = [np.asarray(bound(grid, q), float) for q in bits]
    return grid, np.array(curves)


def plot_relative_accuracy(
    eps,
    rel_mean,
    bits,
    bound: Callable | np.ndarray | None,
    path,
    title="",
    n_features: int = 1,
    *,
    xscale: str = "linear",
) -> Figure:
    """Figs. 4/7: relative accuracy vs l-inf strength per bit width, with the model bound.

    ``rel_mean``: shape (n_bits, n_eps). ``bound``: None (the geometric model,
    ((h - eps_l2)/h)^n with n = n_features, eps_l2 = eps sqrt(n), h from s = sqrt(n) 2^-q),
    a callable ``bound(eps, q)``, or an array (n_bits, n_eps). Bounds are dashed. On MNIST the
    bound falls to 0 by eps = h / sqrt(n) < 0.001; ``xscale="log"`` shows its shape (and
    leaves out eps = 0).
    """
    eps, rel, bits = np.asarray(eps, float), np.asarray(rel_mean, float), np.asarray(bits)
    grid, curves = _bound_curves(eps, bits, bound, n_features)
    cmap = colormaps["plasma"]
    log = xscale == "log"
    shown = eps > 0 if log else np.ones(eps.size, bool)
    shown_grid = grid > 0 if log else np.ones(grid.size, bool)
    fig, (ax,) = _figure(1, width=6.0, height=4.2)
    for i, q in enumerate(bits):
        color = cmap(0.85 * i / max(bits.size - 1, 1))
        label = f"{q} bit" + ("s" if q != 1 else "")
        ax.plot(eps[shown], rel[i][shown], "-", color=color, label=label)
        ax.plot(grid[shown_grid], curves[i][shown_grid], "--", color=color, lw=1)
    ax.plot([], [], "k--", lw=1, label="model bound")
    ax.set(
        title=title or "relative accuracy",
        xlabel="attack strength ε (l∞)",
        ylabel="relative accuracy (adversarial / clean)",
        ylim=(-0.02, 1.05),
        xscale=xscale,
    )
    ax.legend(fontsize="x-small", ncol=2)
    return save_png(fig, path)


def plot_accuracy_vs_eps(eps, acc, labels, path, title="") -> Figure:
    """Accuracy vs attack strength for one run: ``acc`` (n_curves, n_eps) or (n_eps,)."""
    eps, acc = np.asarray(eps, float), np.atleast_2d(np.asarray(acc, float))
    if len(labels) != acc.shape[0]:
        raise UsageError(f"{len(labels)} labels for {acc.shape[0]} accuracy curves")
    fig, (ax,) = _figure(1, width=5.5, height=4.0)
    for row, label in zip(acc, labels, strict=True):
        ax.plot(eps, row, "-", label=label)
    ax.set(
        title=title or "accuracy under attack",
        xlabel="attack strength ε (l∞)",
        ylabel="accuracy",
        ylim=(-0.02, 1.02),
    )
    ax.legend()
    return save_png(fig, path)


def plot_models_vs_bits(bits, curves, labels, eps_picks, path, title="") -> Figure:
    """Accuracy vs weight bits for given models: ``curves`` (n_curves, n_bits, n_picks), NaN
    where a curve has no cell at a width; one panel per strength in ``eps_picks``, one line (with
    markers, so single widths show) per curve."""
    curves = np.asarray(curves, float)
    _check_shape("curves", curves, (len(labels), len(bits), len(eps_picks)))
    fig, axes = _figure(len(eps_picks), height=4.0)
    for k, (ax, e) in enumerate(zip(axes, eps_picks, strict=True)):
        for c, label in enumerate(labels):
            keep = np.isfinite(curves[c, :, k])
            ax.plot(np.asarray(bits)[keep], curves[c, keep, k], "o-", label=label)
        ax.set(title=f"ε = {e:g}", xlabel="weight bits q", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.set_xticks(list(bits))
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return save_png(fig, path)


def plot_attacks_vs_bits(bits, acc, attacks, activations, eps_picks, path, title="") -> Figure:
    """Accuracy vs bits per attack (the suite's members and its worst case) at fixed
    strengths: ``acc`` (n_attacks, n_activations, n_bits, n_picks), one panel per activation,
    one colour per strength, one line style per attack."""
    acc = np.asarray(acc, float)
    _check_shape("acc", acc, (len(attacks), len(activations), len(bits), len(eps_picks)))
    styles = ["-", "--", ":", "-."]
    colours = [colormaps["tab10"](i) for i in range(10)]
    fig, axes = _figure(len(activations), height=4.6)
    for a, (ax, act) in enumerate(zip(axes, activations, strict=True)):
        for m, name in enumerate(attacks):
            for k, e in enumerate(eps_picks):
                ax.plot(bits, acc[m, a, :, k], styles[m % len(styles)], color=colours[k % len(colours)],
                        marker="o" if name == "worst case" else None, markersize=3,
                        label=f"{name} eps={e:g}")
        ax.set(title=f"{title} — {act}" if title else act, xlabel="weight bits q", ylabel="test accuracy",
               xticks=bits)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="xx-small", ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return save_png(fig, path)


STYLES, MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D")  # targets can overlap exactly


def plot_targets_vs_eps(eps, acc_mean, acc_std, bits, targets, path, title="", notes=None) -> Figure:
    """Targets compared on the same models: accuracy vs strength, one panel per bit width,
    one line per target (mean, with a ± std band where ``acc_std`` is given).

    ``acc_mean``/``acc_std``: shape (n_targets, n_bits, n_eps); ``acc_std`` may be None.
    ``notes[t][b]``: why target t has no line at bit width b ("refused", "stalled"); it is
    named in that panel's legend instead of a line.
    """
    eps, bits, mean = np.asarray(eps, float), np.asarray(bits), np.asarray(acc_mean, float)
    shape = (len(targets), bits.size, eps.size)
    _check_shape("acc_mean", mean, shape)
    std = None if acc_std is None else np.asarray(acc_std, float)
    if std is not None:
        _check_shape("acc_std", std, shape)
    fig, axes = _figure(bits.size, width=4.0, height=4.0)
    colours = [colormaps["tab10"](i % 10) for i in range(len(targets))]
    for i, (ax, q) in enumerate(zip(axes, bits, strict=True)):
        for t, (name, colour) in enumerate(zip(targets, colours, strict=True)):
            note = notes[t][i] if notes else ""
            if note or np.isnan(mean[t, i]).all():
                ax.plot([], [], " ", label=f"{name}: {note or 'no data'}")
                continue
            ax.plot(eps, mean[t, i], STYLES[t % len(STYLES)], color=colour, lw=1.8,
                    marker=MARKERS[t % len(MARKERS)], ms=4, label=name)
            if std is not None:
                ax.fill_between(eps, mean[t, i] - std[t, i], mean[t, i] + std[t, i], color=colour,
                                alpha=0.12, lw=0)
        label = f"{int(q)} bit" + ("s" if q != 1 else "")
        ax.set(title=f"{title} — {label}" if title else label,
               xlabel="attack strength ε", ylabel="test accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize="x-small")
    return save_png(fig, path)
