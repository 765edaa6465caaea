"""Learning Dynamics, Solved: the library behind the book's chapters.

Modules are organised by concept, not by paper (see DESIGN.md):
``linear``, ``train``, ``tasks``, ``presets``, ``claims``, ``plotting`` and
``validation``.
"""

__version__ = "0.1.0"
