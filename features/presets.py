"""Named feature specs: ``baseline`` (the handbook's 15) and ``default`` (richer, for the model)."""

from __future__ import annotations

from datetime import timedelta

from features.spec import (
    AMOUNT,
    CUSTOMER,
    DAY,
    FRAUD,
    TERMINAL,
    Aggregate,
    AmountProfile,
    Calendar,
    CompromiseScore,
    FeatureSpec,
    Op,
    Ratio,
    SincePrevious,
)

HOUR = timedelta(hours=1)
LABEL_DELAY = 7 * DAY
_HANDBOOK_WINDOWS = (1 * DAY, 7 * DAY, 30 * DAY)


def _handbook_aggregates() -> tuple[Aggregate, ...]:
    customer = [Aggregate(CUSTOMER, op, w) for w in _HANDBOOK_WINDOWS for op in (Op.COUNT, Op.MEAN)]
    terminal = [
        Aggregate(TERMINAL, op, w, column=FRAUD, delay=LABEL_DELAY)
        for w in _HANDBOOK_WINDOWS
        for op in (Op.COUNT, Op.MEAN)
    ]
    return (*customer, *terminal)


BASELINE = FeatureSpec(
    name="baseline",
    raw=(AMOUNT,),
    calendar=(Calendar.WEEKEND, Calendar.NIGHT),
    aggregates=_handbook_aggregates(),
    label_delay=LABEL_DELAY,
)

_CUSTOMER_30D_MEAN = Aggregate(CUSTOMER, Op.MEAN, 30 * DAY)
_CUSTOMER_7D_MEAN = Aggregate(CUSTOMER, Op.MEAN, 7 * DAY)
_CUSTOMER_1D_MEAN = Aggregate(CUSTOMER, Op.MEAN, 1 * DAY)
# The card's habits before the last two weeks: a compromised card (the data's third fraud
# scenario lasts 14 days) is compared with what it did before, not with its own fraud.
_HABIT_DELAY = 14 * DAY
_CUSTOMER_HABIT_MEAN = Aggregate(CUSTOMER, Op.MEAN, 30 * DAY, delay=_HABIT_DELAY)
_CUSTOMER_HABIT_MAX = Aggregate(CUSTOMER, Op.MAX, 30 * DAY, delay=_HABIT_DELAY)

DEFAULT = FeatureSpec(
    name="default",
    raw=(AMOUNT,),
    calendar=(Calendar.WEEKEND, Calendar.NIGHT, Calendar.HOUR),
    aggregates=(
        *_handbook_aggregates(),
        Aggregate(CUSTOMER, Op.COUNT, HOUR),
        Aggregate(CUSTOMER, Op.SUM, 1 * DAY),
        Aggregate(CUSTOMER, Op.STD, 7 * DAY),
        Aggregate(CUSTOMER, Op.STD, 30 * DAY),
        Aggregate(CUSTOMER, Op.MAX, 1 * DAY),
        Aggregate(CUSTOMER, Op.MAX, 7 * DAY),
        Aggregate(CUSTOMER, Op.MAX, 30 * DAY),
        Aggregate(CUSTOMER, Op.MIN, 7 * DAY),
        _CUSTOMER_HABIT_MEAN,
        _CUSTOMER_HABIT_MAX,
        Aggregate(CUSTOMER, Op.STD, 30 * DAY, delay=_HABIT_DELAY),
        Aggregate(CUSTOMER, Op.COUNT, 30 * DAY, delay=_HABIT_DELAY),
        Aggregate(TERMINAL, Op.COUNT, HOUR),
        Aggregate(TERMINAL, Op.COUNT, 6 * HOUR),
        Aggregate(TERMINAL, Op.MEAN, 3 * DAY, column=FRAUD, delay=LABEL_DELAY),
        Aggregate(TERMINAL, Op.MEAN, 7 * DAY, delay=LABEL_DELAY),
        Aggregate(TERMINAL, Op.MAX, 7 * DAY, delay=LABEL_DELAY),
    ),
    since_previous=(SincePrevious(CUSTOMER), SincePrevious(TERMINAL)),
    ratios=(
        Ratio(_CUSTOMER_1D_MEAN, AMOUNT),
        Ratio(_CUSTOMER_7D_MEAN, AMOUNT),
        Ratio(_CUSTOMER_30D_MEAN, AMOUNT),
        Ratio(_CUSTOMER_HABIT_MEAN, AMOUNT),
        Ratio(_CUSTOMER_HABIT_MAX, AMOUNT),
    ),
    label_delay=LABEL_DELAY,
)

# ``default`` plus what investigator feedback gives: frauds confirmed at the terminal and on the
# card as soon as their labels arrive (the stream only: the backfill refuses known_only).
FEEDBACK = FeatureSpec(
    name="feedback",
    raw=DEFAULT.raw,
    calendar=DEFAULT.calendar,
    aggregates=(
        *DEFAULT.aggregates,
        Aggregate(TERMINAL, Op.SUM, 28 * DAY, column=FRAUD, known_only=True),
        Aggregate(TERMINAL, Op.MEAN, 28 * DAY, column=FRAUD, known_only=True),
        Aggregate(TERMINAL, Op.SUM, 1 * DAY, column=FRAUD, known_only=True),
        Aggregate(CUSTOMER, Op.SUM, 14 * DAY, column=FRAUD, known_only=True),
    ),
    since_previous=DEFAULT.since_previous,
    ratios=DEFAULT.ratios,
    label_delay=LABEL_DELAY,
)

# ``default`` plus batch features looked up from the feature store: the card's 90-day habits
# (the transaction's deviation from them is computed in the stream) and the terminal's
# common-point-of-compromise score over 28 days.
ENRICHED = FeatureSpec(
    name="enriched",
    raw=DEFAULT.raw,
    calendar=DEFAULT.calendar,
    aggregates=DEFAULT.aggregates,
    since_previous=DEFAULT.since_previous,
    ratios=DEFAULT.ratios,
    label_delay=LABEL_DELAY,
    lookups=(AmountProfile(90 * DAY), CompromiseScore(28 * DAY)),
)

PRESETS: dict[str, FeatureSpec] = {s.name: s for s in (BASELINE, DEFAULT, FEEDBACK, ENRICHED)}


def get(name: str) -> FeatureSpec:
    """The preset called ``name``; ``ValueError`` lists the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown feature preset {name!r}; choose from {sorted(PRESETS)}"
        ) from None
