"""Non-layout logic behind the Streamlit app (no Streamlit in here, so it is unit-tested like the rest).

- :mod:`~tinytl_core.ui.checks` -- input checks before heavy work: resolution, memory fit, pretrained
  weights, uploaded archives.
- :mod:`~tinytl_core.ui.explorer` -- the Memory Explorer's data: per-mode totals, one real measured step
  (stock PyTorch and the training engine), per-layer tables with measured columns.
- :mod:`~tinytl_core.ui.figures` -- plotly figures and the lite residual diagram.
- :mod:`~tinytl_core.ui.vega` -- Vega-Lite charts: the memory-accuracy scatter and the training curves.
- :mod:`~tinytl_core.ui.jobs` -- the Adapt page's side of the job queue: submit one job per mode, a
  session's own jobs (place in line, progress, curves, results; ``JobWatch`` reads only what is new
  across a session's polls), owner-only cancel, the worker pool.
- :mod:`~tinytl_core.ui.runs` -- stored runs as a frame for the Compare runs page.
- :mod:`~tinytl_core.ui.text` -- library docstrings as Markdown (the About page shows the rules in force).
"""
