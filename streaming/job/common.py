"""What every stage of the job shares: the metrics namespace and the processing-time clock."""

from __future__ import annotations

from collections.abc import Callable

NAMESPACE = "fraudstream"


Clock = Callable[[], float]
