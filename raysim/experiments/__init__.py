"""The experiments layer shared by ``raysim compare``, ``raysim stress`` and ``raysim tune``
(docs/architecture.md, "Layers" and "Experiments"):

* :mod:`raysim.experiments.plan`: a :class:`~raysim.experiments.plan.Plan` of named cells (one
  whole run each), whether a cell is already done (one fingerprint,
  :func:`raysim.config.fingerprint`), and running the cells that are not;
* :mod:`raysim.experiments.collect`: finished run directories to tidy tables (final metrics
  per cell with its outcome, per-round curves);
* :mod:`raysim.experiments.plots`: the plots over many runs (mean curves, heatmaps), drawn with
  ``raysim.plotstyle``;
* :mod:`raysim.experiments.cli`: the command-line options the three commands share.

Each command keeps only its own file format and tables on top of it.
"""
