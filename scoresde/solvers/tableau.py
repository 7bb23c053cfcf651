"""Explicit Runge–Kutta methods as Butcher tableaux.

A new method is a new table, not a new loop: :mod:`.fixed` runs any explicit table on a uniform grid,
:mod:`.adaptive` runs any embedded FSAL table with per-sample step sizes. Coefficients are stored as
exact fractions, checked for consistency (row sums equal ``c``, weights sum to one) and converted to
Python floats once.

References:
    E. Hairer, S. P. Nørsett, G. Wanner, *Solving Ordinary Differential Equations I*, 2nd ed.,
    Springer 1993, Sections II.1 (Euler, Heun, midpoint, classical RK4) and II.5 (Table 5.2).
    J. R. Dormand, P. J. Prince, "A family of embedded Runge–Kutta formulae",
    J. Comput. Appl. Math. 6(1):19–26, 1980.
    P. Bogacki, L. F. Shampine, "A 3(2) pair of Runge–Kutta formulas",
    Appl. Math. Lett. 2(4):321–325, 1989.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction as Fr
from typing import Optional, Sequence, Tuple


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method ``k_i = f(t + c_i h, y + h sum_j a_ij k_j)``, ``y_1 = y + h sum_i b_i k_i``.

    Attributes:
        name: short name.
        c, a, b: the tableau (``a`` strictly lower triangular, given row by row; row ``i`` has ``i`` entries).
        order: order of the propagated solution ``b``.
        b_hat: weights of the embedded solution (adaptive methods), else ``None``.
        embedded_order: order of ``b_hat``.
        fsal: first-same-as-last: the last stage is ``f(t + h, y_1)`` and is reused as the next ``k_1``.
    Derived (floats): ``c_f``, ``a_f``, ``b_f``, ``e_f = b - b_hat`` (error weights), ``stages``.
    """

    name: str
    c: Tuple[Fr, ...]
    a: Tuple[Tuple[Fr, ...], ...]
    b: Tuple[Fr, ...]
    order: int
    b_hat: Optional[Tuple[Fr, ...]] = None
    embedded_order: Optional[int] = None
    fsal: bool = False
    c_f: Tuple[float, ...] = field(init=False, repr=False)
    a_f: Tuple[Tuple[float, ...], ...] = field(init=False, repr=False)
    b_f: Tuple[float, ...] = field(init=False, repr=False)
    e_f: Optional[Tuple[float, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s:
            raise ValueError(f"tableau {self.name}: c, a and b must have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name}: row {i} of a must have {i} entries (explicit method)")
            if sum(row, Fr(0)) != self.c[i]:
                raise ValueError(f"tableau {self.name}: row {i} of a does not sum to c[{i}]")
        if sum(self.b, Fr(0)) != 1:
            raise ValueError(f"tableau {self.name}: b does not sum to 1")
        if self.b_hat is not None:
            if len(self.b_hat) != s or sum(self.b_hat, Fr(0)) != 1:
                raise ValueError(f"tableau {self.name}: b_hat must have {s} entries summing to 1")
            if self.embedded_order is None:
                raise ValueError(f"tableau {self.name}: embedded_order is required with b_hat")
        if self.fsal and (self.c[-1] != 1 or tuple(self.a[-1]) != tuple(self.b[:-1]) or self.b[-1] != 0):
            raise ValueError(f"tableau {self.name}: FSAL needs c[-1] = 1, a[-1] = b[:-1] and b[-1] = 0")
        object.__setattr__(self, "c_f", tuple(float(x) for x in self.c))
        object.__setattr__(self, "a_f", tuple(tuple(float(x) for x in row) for row in self.a))
        object.__setattr__(self, "b_f", tuple(float(x) for x in self.b))
        e = None if self.b_hat is None else tuple(float(x - y) for x, y in zip(self.b, self.b_hat))
        object.__setattr__(self, "e_f", e)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_hat is not None

    @property
    def error_order(self) -> int:
        """``q = min(order, embedded_order)``: the local error estimate is ``O(h^(q+1))``."""
        return min(self.order, self.embedded_order) if self.embedded_order is not None else self.order


def _fr(xs: Sequence) -> Tuple[Fr, ...]:
    return tuple(Fr(x) for x in xs)


def _rows(rows: Sequence[Sequence]) -> Tuple[Tuple[Fr, ...], ...]:
    return tuple(_fr(r) for r in rows)


#: Explicit Euler, order 1 (Hairer et al. I, eq. II.1.2).
EULER = ButcherTableau("euler", c=_fr([0]), a=_rows([[]]), b=_fr([1]), order=1)

#: Heun's method = explicit trapezoidal rule, order 2 (Hairer et al. I, Sec. II.1, Table 1.1 "Heun").
HEUN = ButcherTableau("heun", c=_fr([0, 1]), a=_rows([[], [1]]), b=_fr(["1/2", "1/2"]), order=2)

#: Explicit midpoint rule (Runge 1895), order 2 (Hairer et al. I, eq. II.1.3).
MIDPOINT = ButcherTableau("midpoint", c=_fr([0, "1/2"]), a=_rows([[], ["1/2"]]), b=_fr([0, 1]), order=2)

#: The classical Runge–Kutta method of order 4 (Kutta 1901; Hairer et al. I, Table II.1.2, left).
RK4 = ButcherTableau(
    "rk4",
    c=_fr([0, "1/2", "1/2", 1]),
    a=_rows([[], ["1/2"], [0, "1/2"], [0, 0, 1]]),
    b=_fr(["1/6", "1/3", "1/3", "1/6"]),
    order=4,
)

#: Bogacki–Shampine 3(2) pair, FSAL (Bogacki & Shampine 1989).
BOSH3 = ButcherTableau(
    "bosh3",
    c=_fr([0, "1/2", "3/4", 1]),
    a=_rows([[], ["1/2"], [0, "3/4"], ["2/9", "1/3", "4/9"]]),
    b=_fr(["2/9", "1/3", "4/9", 0]),
    b_hat=_fr(["7/24", "1/4", "1/3", "1/8"]),
    order=3,
    embedded_order=2,
    fsal=True,
)

#: Dormand–Prince 5(4) pair "DOPRI5", FSAL (Dormand & Prince 1980; Hairer et al. I, Table II.5.2).
DOPRI5 = ButcherTableau(
    "dopri5",
    c=_fr([0, "1/5", "3/10", "4/5", "8/9", 1, 1]),
    a=_rows([
        [],
        ["1/5"],
        ["3/40", "9/40"],
        ["44/45", "-56/15", "32/9"],
        ["19372/6561", "-25360/2187", "64448/6561", "-212/729"],
        ["9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"],
        ["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84"],
    ]),
    b=_fr(["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0]),
    b_hat=_fr(["5179/57600", 0, "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40"]),
    order=5,
    embedded_order=4,
    fsal=True,
)
