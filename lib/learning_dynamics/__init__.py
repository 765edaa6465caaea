"""Learning Dynamics, Solved: the library behind the book's chapters.

Modules are organised by concept, not by paper (see DESIGN.md):
``linear``, ``train``, ``tasks``, ``presets``, ``claims``, ``plotting`` and
``validation``. Importing the package first sets its CPU thread policy
(:mod:`learning_dynamics.threads`), before torch loads.
"""

from . import threads

THREAD_POLICY = threads.apply()

__version__ = "0.1.0"
