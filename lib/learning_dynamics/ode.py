"""The library's one ODE helper: scipy's DOP853 at tight tolerances, for states of any array shape.

Closed forms are checked against numerical integration of the flow they
solve; every such integration (the race ODEs, the shallow network's flow, the
layerwise model's two layers, and the tests) goes through :func:`integrate`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .validation import Array, Real, validate_params, value_text
from .validation import Callable as AnyCallable


@validate_params({"rhs": AnyCallable(), "y0": Array(), "rtol": Real(low=0.0, strict_low=True),
                  "atol": Real(low=0.0)})
def integrate(rhs: Callable, t, y0, *, rtol: float = 1e-11, atol: float = 1e-14) -> np.ndarray:
    """Solve the autonomous dy/dt = rhs(y) from y(t[0]) = y0; y at the times t, shape (len(t),) + y0.shape.

    Raises RuntimeError if the integrator fails.
    """
    from scipy.integrate import solve_ivp

    given = t
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or len(t) < 1 or not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
        raise ValueError(f"t must be a non-empty, non-decreasing 1-D array of finite times; got {value_text(given, t)}")
    sol = solve_ivp(lambda _, y: np.asarray(rhs(y.reshape(y0.shape))).ravel(), (t[0], t[-1]), y0.ravel(), t_eval=t,
                    rtol=rtol, atol=atol, method="DOP853")
    if not sol.success:
        raise RuntimeError(f"ODE integration failed: {sol.message}")
    return sol.y.T.reshape((len(t),) + y0.shape)
