"""Figures from result objects: Veit et al. (2016) Figs. 3, 5 and 6, and model comparisons.

    plot_path_length_distribution(54, alpha=0.5)      # fraction of paths per length + models
    plot_total_gradient({"exact": pg, "sampled": ps}, overlays={"BN model": bn})   # Fig. 6(b)
    plot_per_path({"sampled": ps})                     # one path's gradient vs length, log y
    plot_delete_each(r)   plot_delete_random(r)   plot_reorder(r)       # Figs. 3, 5(a), 5(b)
    plot_compare({"BatchNorm": pg_bn, "SkipInit": pg_si})               # side by side
    plot_compare_lesions({"ResNet": each_res, "plain": each_plain})      # Veit et al. Fig. 3
    plot_block_influence(c)   plot_influence_vs_deletion(c)   # ShortGPT's BI vs deletion cost
    plot_signal_propagation({"BN": sp_bn, "SkipInit": sp_si})   # Brock et al.'s signal plots
    plot_singularities({"ResNet": s_res, "plain": s_plain})     # Orhan & Pitkow's singularities
    plot_jacobian_spectra({"BN": js_bn, "plain": js_plain})     # block Jacobians' extremes

One module per measurement family: gradients.py (path lengths, gradient by length),
lesion.py, influence.py, signal.py, jacobian.py, singularities.py; what they share in
common.py; all importable from here. `@figure_of(name, suffix)` registers a result's figure in
reports, `@comparison_of(name, file, caption)` the figure comparing it across networks. Each
function takes `ax=None` (a new figure when None) and `title=None` (the Axes' title when
given: the caller knows which model it shows), draws labelled axes with a legend, returns the
Figure and never calls plt.show().
Results in, figures out: no torch, no computation beyond normalising what the results hold.
Lesion rows whose value is NaN (non-finite outputs) are left out and counted in the legend's
title. A legend entry is the label the caller gave, followed by the method ("(exact)",
"(sampled)") unless the label already names it.
"""
from .common import COMPARISONS, FIGURES, comparison_of, figure_of
from .gradients import (plot_compare, plot_gradient_by_length, plot_path_length_distribution,
                        plot_per_path, plot_total_gradient)
from .hessian import plot_hessian_density
from .influence import plot_block_influence, plot_influence_vs_deletion
from .jacobian import plot_jacobian_spectra
from .lesion import plot_compare_lesions, plot_delete_each, plot_delete_random, plot_reorder
from .signal import plot_signal_propagation
from .singularities import plot_singularities

__all__ = ["plot_path_length_distribution", "plot_total_gradient", "plot_gradient_by_length",
           "plot_per_path", "plot_delete_each", "plot_delete_random", "plot_reorder",
           "plot_compare", "plot_compare_lesions", "plot_block_influence",
           "plot_influence_vs_deletion", "plot_signal_propagation", "plot_singularities",
           "plot_hessian_density", "plot_jacobian_spectra",
           "FIGURES", "figure_of", "COMPARISONS", "comparison_of"]
