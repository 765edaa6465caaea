"""Learning Dynamics, Solved: the library behind the book's chapters.

Modules are organised by concept, not by paper (see DESIGN.md):

- models and their closed forms: ``linear`` (layerwise and deep linear
  models), ``shallow`` (the one-hidden-layer linear network), ``gated``
  (gated deep linear networks and their race), ``operators`` (the KPFlow
  operators of recurrent networks), ``mlp`` and ``separation`` (the deep
  network and its layer-by-layer separation), ``springblock`` (the chain);
- training and numerics: ``train`` (the batched trainer), ``results`` (the
  :class:`~learning_dynamics.results.Run` every runner returns), ``ode`` (the one
  ODE helper), ``threads`` (the CPU thread policy);
- data: ``tasks`` (generated tasks, scikit-learn's digits, recurrent tasks);
- running a chapter: ``presets``, ``claims``, ``plotting``, ``seeds``,
  ``cli`` (``python -m learning_dynamics``: list, run, check, timings), and
  ``validation`` (input checks and the seed helper). The book's Sphinx
  extension lives with the book, in ``book/_ext/ld_book.py``.

Importing the package first sets its CPU thread policy
(:mod:`learning_dynamics.threads`), before torch loads.
"""

from . import threads

THREAD_POLICY = threads.apply()

__version__ = "0.1.0"
