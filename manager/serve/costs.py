"""The scheduler's cost model: is a mixed-task batch or a run of switches cheaper?

Measured once at start-up on the serving device (``Engine.calibrate``), as medians of a few runs:

- ``switch``: one fused switch between two tasks (seconds);
- ``merged(n) = merged_fixed + n * merged_per_image``: a forward of ``n`` images through the merged
  model, fitted through two batch sizes;
- ``mixed(n) = mixed_fixed + n * mixed_per_image``: the same through the unmerged mixed-task model;
- ``build``: building the mixed-task model over a new set of tasks.

For waiting groups of sizes ``n_1..n_k`` (``k > 1``), with ``s`` of them not live now:

    switching = s * switch + sum_i merged(n_i)
    mixed     = mixed(sum_i n_i) + (build, if the mixed model lacks one of the tasks)

and the cheaper one runs. A merged forward's fixed part (weights read once per batch, kernel
launches) is paid per group, the mixed model's once; the mixed model pays per image for the
deltas it adds unmerged. So few large groups switch, many small ones mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class CostModel:
    """Measured costs in seconds (see the module docstring); mixed ones None until measured."""

    switch: float
    merged_fixed: float
    merged_per_image: float
    mixed_fixed: float | None = None
    mixed_per_image: float | None = None
    build: float | None = None

    def merged(self, n: int) -> float:
        return self.merged_fixed + n * self.merged_per_image

    def mixed(self, n: int) -> float | None:
        if self.mixed_fixed is None or self.mixed_per_image is None:
            return None
        return self.mixed_fixed + n * self.mixed_per_image

    def switching_cost(self, sizes: Sequence[int], switches: int) -> float:
        """Seconds to serve the groups one after another, with ``switches`` switches."""
        return switches * self.switch + sum(self.merged(n) for n in sizes)

    def mixed_cost(self, sizes: Sequence[int], rebuild: bool) -> float | None:
        """Seconds to serve the groups as one mixed batch (None: not measured)."""
        cost = self.mixed(sum(sizes))
        if cost is None:
            return None
        return cost + (self.build or 0.0) * rebuild

    def to_dict(self) -> dict[str, float | None]:
        return dict(self.__dict__)


def fit_line(n1: int, t1: float, n2: int, t2: float) -> tuple[float, float]:
    """``(fixed, per_item)`` of the line through two timings, both clamped at 0."""
    if n2 == n1:
        return max(t1, 0.0), 0.0
    per = max((t2 - t1) / (n2 - n1), 0.0)
    return max(t1 - n1 * per, 0.0), per
