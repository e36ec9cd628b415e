"""``fraudstream backfill``: every feature of every transaction of a history."""

from __future__ import annotations

import pandas as pd
from tqdm import tqdm

from features import presets
from features.backfill import backfill
from training.files import read_transactions, write_parquet


def run_backfill(
    inputs: list[str], output: str, preset: str, naive_time_zone: str = "UTC"
) -> pd.DataFrame:
    """``fraudstream backfill``: read, compute, write parquet (paths or ``gs://`` URIs, in and
    out); progress on stderr."""
    spec = presets.get(preset)
    with tqdm(total=3, desc="backfill", unit="step") as bar:
        bar.set_postfix_str(f"reading {len(inputs)} file(s)")
        df = read_transactions(inputs, spec, naive_time_zone=naive_time_zone)
        bar.update()
        bar.set_postfix_str(f"computing {len(spec.names)} features of {len(df):,} events")
        features = backfill(df, spec)
        bar.update()
        bar.set_postfix_str(f"writing {output}")
        write_parquet(features, output)
        bar.update()
    print(f"wrote {len(features):,} rows x {len(spec.names)} features ({spec.name}) to {output}")
    return features
