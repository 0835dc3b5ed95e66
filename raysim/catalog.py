"""Which real data sets raysim knows and which tasks each one serves (docs/data.md).

A plain table below ``raysim.config``: the config validates ``data.dataset`` / ``data.task``
against it without importing the data loaders (``raysim.data.real``, which reads it too), so
config and data do not import each other (docs/architecture.md, "Layers").
"""

from __future__ import annotations

IMAGE_DATASETS = ("mnist-5k", "digits", "mnist", "fashion-mnist", "emnist")
TASKS: dict[str, tuple[str, ...]] = {**{d: ("mc", "cnn") for d in IMAGE_DATASETS}, "rcv1": ("mlc", "lg"),
                                     "guimmun": ("lg",)}


def check_task(dataset: str, task: str) -> None:
    """Raise ValueError (shown as a config error) for a task the dataset cannot serve."""
    ok = TASKS.get(dataset)
    if ok is None:
        raise ValueError(f"data.dataset = {dataset!r} is unknown; known: {', '.join(TASKS)}")
    if task not in ok:
        why = " (lr is regression; the real datasets are classification)" if task == "lr" else ""
        raise ValueError(f"data.task = {task!r} cannot be used with data.dataset = {dataset!r}{why}; "
                         f"use data.task = {' or '.join(repr(t) for t in ok)}")
