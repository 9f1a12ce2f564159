"""Sparse-update scheme search: which biases and weight rows to train under a memory budget.

:func:`analyse_contributions` measures, per option (biases of the last k blocks, one layer's weight at an
update ratio), the accuracy it adds in a short run and the memory the model says it costs;
:func:`select_greedy` picks a scheme under a budget of modelled step peak. The CLI is
``python -m tinytl_core sparse-search``; the scheme itself lives in :mod:`tinytl_core.sparse_scheme`.
"""

from tinytl_core.sparse_search import search
from tinytl_core.sparse_search.search import *  # noqa: F403 -- the public names, listed once in search.py

__all__ = search.__all__
