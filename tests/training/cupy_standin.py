"""A stand-in for CuPy on machines without a GPU: host arrays, every copy to the device kept,
and whether it sees a GPU (``cuda.is_available``) as asked."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class StandInCupy(SimpleNamespace):
    """CuPy's two calls ``predict`` makes, on host arrays, recording what went to the device."""

    def __init__(self, gpu: bool = True) -> None:
        super().__init__(sent=[], cuda=SimpleNamespace(is_available=lambda: gpu))

    def asarray(self, rows: np.ndarray) -> np.ndarray:
        self.sent.append(rows)
        return rows

    @staticmethod
    def asnumpy(values: np.ndarray) -> np.ndarray:
        return np.asarray(values)
