"""The paper's figures and tables regenerated from our run records.

One script per figure/table (``python -m paper_figures.fig5_val_accuracy --runs runs/``), all of
them with ``python -m paper_figures --runs runs/ --out figures/``. Each ``make(index, out)``
writes PNG + PDF and returns a :class:`~paper_figures.common.FigureResult` with the plotted data.
"""
from paper_figures import (fig1_upge, fig2_passk, fig3_heatmap, fig4_heatmap_diff,
                           fig5_val_accuracy, fig6_offline_ratio, fig7_entropy_length,
                           fig8_gate_ablation, table2, table3, table5, table6)

SCRIPTS = {m.NAME: m.make for m in (
    fig1_upge, fig2_passk, fig3_heatmap, fig4_heatmap_diff, fig5_val_accuracy,
    fig6_offline_ratio, fig7_entropy_length, fig8_gate_ablation, table2, table3, table5, table6)}
