"""Click parameter types shared by ``xel-link`` and ``xel-serve``."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.ParamType):
    """A float that is a number: ``nan``, ``inf`` and ``-inf`` (which Python's ``float`` accepts) are refused."""

    name = "float"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; a finite number like 0.5 or -1 is required", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; a finite number like 0.5 or -1 is required", param, ctx)
        return number
