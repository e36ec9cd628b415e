"""The ``fraudstream`` command. Sub-commands import what they need, so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from features.spec import DEFAULT_MAX_LATENESS, HOUR
from streaming.local import emulators as emu

REFERENCE_DATA = "../shared/data/transactions.parquet"


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option by its first long spelling (and any short one): flags are snake_case,
    as the job's Beam options are, and any other long spelling is an alias kept for older
    command lines, accepted but not listed."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if len(longs) > 1:
            action = copy.copy(action)
            action.option_strings = [
                s for s in action.option_strings if not s.startswith("--") or s == longs[0]
            ]
        return super()._format_action_invocation(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and its sub-commands' parsers) with :class:`_HelpFormatter`."""

    def __init__(
        self, *args: Any, formatter_class: type[argparse.HelpFormatter] = _HelpFormatter, **kw: Any
    ) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kw)


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="PATH",
        help="transactions: parquet, CSV, JSON lines or Avro (by the name's ending; .csv.gz "
        "and .json.gz too), a path, glob or gs:// URI (repeatable)",
    )
    p.add_argument(
        "--naive_time_zone",
        default="UTC",
        metavar="ZONE",
        help="the zone of the history's times that carry none, as the job's option of that name "
        "reads messages' (e.g. Europe/Paris; default UTC)",
    )


def _date(text: str) -> str:
    """An option's date or time (``YYYY-MM-DD``, ISO 8601), checked as the commands read it
    (pandas); returned as given. argparse names the option in the error."""
    import pandas as pd

    try:
        ok = pd.Timestamp(text) is not pd.NaT
    except (ValueError, TypeError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} ({exc})") from None
    if not ok:
        raise argparse.ArgumentTypeError(f"not a date: {text!r}")
    return text


def _presets() -> dict:
    from features.presets import PRESETS

    return PRESETS


def _local_store(p: argparse.ArgumentParser, aliases: bool = False) -> None:
    """``--feature_store_profile`` (default local) and ``--feature_repo`` of the batch commands
    (``aliases``: also the older ``--profile`` and ``--repo``)."""
    from streaming.store.names import PROFILES, REPO

    p.add_argument("--feature_store_profile", *(["--profile"] if aliases else []),
                   default="local", choices=PROFILES,
                   help="feature store profile (feature_repo/README.md)")  # fmt: skip
    p.add_argument("--feature_repo", *(["--repo"] if aliases else []), default=str(REPO),
                   metavar="PATH", help="Feast repository")  # fmt: skip


def _print_summary(summary: dict[str, Any], width: int = 28) -> None:
    for key, value in summary.items():
        print(f"  {key:{width}s} {value}")


def _preset(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--preset", default=default, choices=tuple(_presets()), help="feature preset")


def _add_backfill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill",
        help="compute every feature of every transaction of a history",
        description="Read transaction parquet files (concatenated, ordered by TRANSACTION_ID) "
        "and write TRANSACTION_ID plus one column per feature, each as seen at its event's time.",
    )
    _inputs(p)
    p.add_argument("--output", required=True, metavar="PATH",
                   help="features parquet to write (path or gs://)")  # fmt: skip
    _preset(p, "baseline")
    p.set_defaults(func=_run_backfill)


def _run_backfill(args: argparse.Namespace) -> int:
    from streaming.batch.backfill import run_backfill

    run_backfill(args.input, args.output, args.preset, args.naive_time_zone)
    return 0


def _add_bootstrap(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "bootstrap",
        help="card and terminal states for a job's start (fraudstream run --initial_state)",
        description="Replay a history (labels once their delay has passed) through the "
        "streaming path and write every card's and terminal's state, so that a job started "
        "where the history ends has the features of its whole history: to a parquet file "
        "(--output; run --initial_state FILE) and/or to the Bigtable state table of the "
        "job's Feast settings (--to_store; run --initial_state store, which reads an entity's "
        "state the first time the job sees it). See streaming/job/initial_states.py.",
    )
    _inputs(p)
    p.add_argument("--output", metavar="PATH", help="state parquet to write (path or gs://)")
    p.add_argument(
        "--to_store",
        action="store_true",
        help="write the states to Bigtable, table <feast project>-states of the online store's "
        "instance (replacing what it held), for `run --initial_state store`",
    )
    _preset(p, "default")
    _job_ids(p, "key the states by")
    p.add_argument("--max_lateness_hours", type=float, default=DEFAULT_MAX_LATENESS / HOUR)
    _job_store(p, "with --to_store: the job's Feast settings (as `run` takes them)")
    p.set_defaults(func=_run_bootstrap)


def _job_ids(p: argparse.ArgumentParser, what: str) -> None:
    """``--pseudonymise_ids`` and ``--id_key_secret``, as the job takes them."""
    p.add_argument(
        "--pseudonymise_ids",
        default="on",
        choices=("on", "off"),
        help=f"{what} the job's pseudonyms (same key as `run`: $FRAUDSTREAM_ID_KEY or "
        "--id_key_secret); off for a job run with --pseudonymise_ids off",
    )
    p.add_argument("--id_key_secret", help="Secret Manager version of the id key")


def _job_store(p: argparse.ArgumentParser, title: str) -> None:
    """The Feast settings of the job's online store, as ``run`` takes them."""
    from streaming.store.names import PROFILES, REPO

    store = p.add_argument_group(title)
    store.add_argument("--feature_store_profile", default="emulator", choices=PROFILES,
                       help="feature_repo profile: emulator or gcp (Bigtable)")  # fmt: skip
    store.add_argument("--feature_repo", default=str(REPO), metavar="PATH",
                       help="the Feast repository")  # fmt: skip
    store.add_argument("--feast_registry", help="the Feast registry (overrides the profile's)")
    store.add_argument("--bigtable_project", help="GCP project of Bigtable (overrides)")
    store.add_argument("--bigtable_instance", help="Bigtable instance (overrides)")


def _run_bootstrap(args: argparse.Namespace) -> int:
    from streaming.batch.bootstrap import run_bootstrap
    from streaming.job.pipeline import store_settings

    if args.output is None and not args.to_store:
        raise ValueError("give --output FILE, --to_store, or both")
    store = store_settings(args) if args.to_store else None
    run_bootstrap(
        args.input,
        args.output,
        args.preset,
        args.pseudonymise_ids == "on",
        args.id_key_secret,
        args.max_lateness_hours,
        store=store,
        naive_time_zone=args.naive_time_zone,
    )
    return 0


def _add_parity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parity",
        help="stream == backfill on a whole history, and the golden file",
        description="Backfill the reference data, replay it through the streaming path with "
        "labels after their delay, check both agree and compare with the published golden file.",
    )
    p.add_argument(
        "--input",
        default=REFERENCE_DATA,
        metavar="PATH",
        help="transactions parquet (synthetic history if missing)",
    )
    _preset(p, "baseline")
    p.add_argument("--events", type=int, default=None, help="use only the first N transactions")
    p.add_argument("--out", default="out/parity", metavar="DIR", help="where to write results")
    p.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON")
    p.set_defaults(func=_run_parity)


def _run_parity(args: argparse.Namespace) -> int:
    from streaming.batch.parity import run_parity

    return run_parity(args.input, args.preset, args.events, args.out, args.json)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole job on the emulators: train, run, replay, live progress, report",
        description="Start the emulators, train a model on the history (or reuse it), "
        "bootstrap the card and terminal states from it into Bigtable, materialize the batch "
        "features as of the replay's first midnight, run the streaming job (states and batch "
        "features from Bigtable), replay the last --events transactions with labels after "
        "their delay, show live progress, then a summary and a report (out/demo/report.md). "
        "Without the Google Cloud SDK (or with --embedded) the same core runs in process. Uses "
        "the built-in simulator when the reference data is absent.",
    )
    p.add_argument("--input", default=REFERENCE_DATA, metavar="PATH", help="transactions parquet")
    _preset(p, "enriched")
    p.add_argument("--events", type=int, default=5_000, help="transactions to replay")
    p.add_argument("--rate", type=float, default=None, metavar="EPS", help="events/s (max: none)")
    p.add_argument("--train_days", "--train-days", type=int, default=56,
                   help="training window in days (>= 21)")  # fmt: skip
    p.add_argument("--embedded", action="store_true", help="in process, without the emulators")
    p.add_argument("--out", default="out/demo", metavar="DIR", help="where to write results")
    p.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from streaming.local.demo import DemoConfig, run_demo

    config = DemoConfig(args.input, args.preset, args.events, args.rate, args.out, args.json,
                        args.embedded, args.train_days)  # fmt: skip
    return run_demo(config)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="the handbook's evaluation protocol on stream-computed features",
        description="Train on the --train_days days ending at DATE + 7 days, skip a 7-day "
        "delay, test on the next 7 days (known-compromised cards removed day by day) with test "
        "features from the streaming path; report AUC ROC, AP and CP@100 beside the published "
        "table.",
    )
    _inputs(p)
    p.add_argument("--train_start", "--train-start", required=True, type=_date, metavar="DATE",
                   help="the protocol's DATE")  # fmt: skip
    p.add_argument(
        "--train_days", "--train-days", type=int, default=84,
        help="days of training (>= 7; default 84, the project's recommendation, as the "
        "README's results use; 7 reproduces the handbook's setting)",
    )  # fmt: skip
    _preset(p, "default")
    p.add_argument("--no_tune", "--no-tune", action="store_true",
                   help="skip the hyperparameter search")  # fmt: skip
    p.add_argument("--no_feedback", "--no-feedback", action="store_true",
                   help="skip the investigator-feedback line")  # fmt: skip
    p.add_argument("--compare", action="append", default=[], metavar="PRESET",
                   choices=tuple(_presets()),
                   help="also evaluate PRESET with the same protocol (repeatable)")  # fmt: skip
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import run_evaluate

    run_evaluate(
        args.input,
        args.train_start,
        args.train_days,
        args.preset,
        args.json,
        tune_grid=not args.no_tune,
        feedback=not args.no_feedback,
        compare=args.compare,
        naive_time_zone=args.naive_time_zone,
    )
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        ("train", "train a model version and gate it against the champion"),
        ("retrain", "train on the newest window whose labels are all known"),
    ):
        p = sub.add_parser(name, help=text, description=text + " (see training/train.py).")
        _inputs(p)
        if name == "train":
            p.add_argument("--train_end", "--train-end", required=True, type=_date, metavar="DATE",
                           help="window end (excl.)")  # fmt: skip
        p.add_argument("--train_days", "--train-days", type=int, default=84,
                       help="window length in days (>= 21)")  # fmt: skip
        p.add_argument("--model_dir", "--model-dir", required=True, metavar="DIR",
                       help="the model registry")  # fmt: skip
        _preset(p, "default")
        p.add_argument("--cards_per_day", "--cards-per-day", type=int, default=100,
                       help="alert threshold objective")  # fmt: skip
        p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from training.train import newest_train_end, run_train

    zone = args.naive_time_zone
    end = getattr(args, "train_end", None) or newest_train_end(args.input, args.preset, zone)
    run_train(args.input, end, args.train_days, args.model_dir, args.preset, args.cards_per_day,
              naive_time_zone=zone)  # fmt: skip
    return 0


def _add_promote(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="make a registry version the champion the running job scores with",
        description="Point the registry's `current` at VERSION (a local path or gs://; the "
        "running job picks it up within --model_poll_s). Lists the versions without --version.",
    )
    p.add_argument("--model_dir", "--model-dir", required=True, metavar="DIR",
                   help="the model registry (path or gs:// URI)")  # fmt: skip
    p.add_argument("--version", default=None, help="e.g. v0003 (default: list the versions)")
    p.set_defaults(func=_run_promote)


def _run_promote(args: argparse.Namespace) -> int:
    from training.registry import Registry

    registry = Registry(args.model_dir, create=False)
    if args.version is None:
        champion = registry.current_version()
        for version in registry.versions():
            print(f"{version}{'  (current)' if version == champion else ''}")
        return 0
    registry.load(args.version)  # refuse a version that does not load
    registry.promote(args.version)
    print(f"{args.version} is the champion of {registry.root}")
    return 0


def _add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="publish a transaction history to Pub/Sub, each label after its delay",
        description="Publish transactions in arrival order and each label after the delay to "
        "two Pub/Sub topics (the emulator when PUBSUB_EMULATOR_HOST is set), paced by --rate "
        "(events/s) or --speedup (times event time), with progress and a final count.",
    )
    _inputs(p)
    p.add_argument(
        "--start", default=None, type=_date, metavar="DATE", help="first transaction time"
    )
    p.add_argument("--end", default=None, type=_date, metavar="DATE", help="end (exclusive)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, metavar="EPS")
    pace.add_argument("--speedup", type=float, default=None, metavar="X")
    p.add_argument("--project", required=True)
    p.add_argument("--transactions_topic", "--topic", required=True,
                   help="transactions topic (id or projects/P/topics/T)")  # fmt: skip
    p.add_argument("--labels_topic", "--labels-topic", required=True, help="labels topic")
    p.add_argument("--label_delay_days", "--label-delay-days", type=float, default=7.0)
    p.add_argument("--ordering_key", "--ordering-key", default=None, metavar="KEY",
                   help="publish every message with this Pub/Sub ordering key: each topic's "
                   "messages reach Pub/Sub in order (one batch at a time, about 1 MB/s); "
                   "without it, concurrent batches can overtake each other")  # fmt: skip
    p.add_argument("--pending_labels", "--pending-labels", action="store_true",
                   help="with --start: also publish the labels still due for the transactions "
                   "of the label delay before it (not those transactions), as a job started "
                   "from `bootstrap` states of the history up to --start expects; the input "
                   "must hold that history")  # fmt: skip
    p.set_defaults(func=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    from streaming.local.replay import run_replay
    from streaming.setup import require_topics, resource_id

    topic = resource_id(args.project, "topics", args.transactions_topic)
    labels_topic = resource_id(args.project, "topics", args.labels_topic)
    require_topics(args.project, (topic, labels_topic))  # before reading the input
    run_replay(
        args.input,
        args.project,
        topic,
        labels_topic,
        args.start,
        args.end,
        args.rate,
        args.speedup,
        args.label_delay_days,
        args.ordering_key,
        args.pending_labels,
        args.naive_time_zone,
    )
    return 0


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="generate a seeded transaction history with the three fraud scenarios",
        description="Write transactions with the columns of the reference data (see "
        "training/simulator.py): large amounts, compromised terminals, compromised cards.",
    )
    p.add_argument("--customers", type=int, default=5_000)
    p.add_argument("--terminals", type=int, default=10_000)
    p.add_argument("--days", type=int, default=183)
    p.add_argument("--start", default="2018-04-01", type=_date, metavar="DATE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, metavar="PATH",
                   help="parquet file to write (path or gs://)")  # fmt: skip
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from training.files import write_parquet
    from training.simulator import SimulatorConfig, simulate

    config = SimulatorConfig(args.customers, args.terminals, args.days, args.start, seed=args.seed)
    df = simulate(config)
    write_parquet(df, args.output)
    print(f"wrote {len(df):,} transactions ({df['TX_FRAUD'].mean():.2%} fraud) to {args.output}")
    return 0


def _add_materialize(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "materialize",
        help="backfill a history into the Feast offline store and load the online store",
        description="Compute every feature of a transaction history, write per-entity rows to "
        "the Feast offline store of the profile and materialize each entity's newest values "
        "into its online store. Run `feast apply` for the profile first.",
    )
    _inputs(p)
    _preset(p, "default")
    _local_store(p, aliases=True)
    p.set_defaults(func=_run_materialize)


def _run_materialize(args: argparse.Namespace) -> int:
    from streaming.store.materialize import run_materialize

    summary = run_materialize(
        args.input,
        args.preset,
        args.feature_store_profile,
        args.feature_repo,
        naive_time_zone=args.naive_time_zone,
    )
    _print_summary(summary)
    return 0


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="what the online store holds for a card or terminal, by the id it was sent with",
        description="Read a card's or a terminal's current features through Feast's "
        "get_online_features, asked for by the id as the producer sent it (digits or a text "
        "id), keyed and pseudonymised as the job does. Prints JSON.",
    )
    p.add_argument("--customer_id", metavar="ID", help="the card, as sent (17, tok_9Xq, ...)")
    p.add_argument("--terminal_id", metavar="ID", help="the terminal, as sent")
    _preset(p, "default")
    _job_ids(p, "ask for")
    _job_store(p, "the job's Feast settings (as `run` takes them)")
    p.set_defaults(func=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    import json

    from features import presets
    from features.table import InputError
    from streaming.job.pipeline import launch_pseudonymiser, store_settings
    from streaming.store.feast_store import FeastFeatureStore
    from streaming.store.inspect import entity_features

    given = {"customer": args.customer_id, "terminal": args.terminal_id}
    ids = {name: value for name, value in given.items() if value is not None}
    if not ids:
        raise InputError("name a card (--customer_id) or a terminal (--terminal_id)")
    spec = presets.get(args.preset)
    on = args.pseudonymise_ids == "on"
    pseudonyms = launch_pseudonymiser(args.id_key_secret) if on else None
    try:
        found = entity_features(
            spec, ids, lambda: FeastFeatureStore.open(spec, store_settings(args)), pseudonyms
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    key = pseudonyms.fingerprint if pseudonyms is not None else "none (clear ids)"
    print(json.dumps({"preset": spec.name, "id_key": key} | found, indent=2))
    return 0


def _add_batch_features(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "batch-features",
        help="the daily batch job: a preset's batch features (lookups) into the Feast stores",
        description="Compute the batch views of a preset with lookups (the card's profile, the "
        "terminal's compromise score) as of --days midnights ending at --as_of, from the whole "
        "history: one file as_of=YYYY-MM-DD.parquet per day in each view's directory of the "
        "offline store (a day run again replaces its file; BigQuery on gcp: appended), and with "
        "--materialize each entity's newest row of those days into the online store. Run it "
        "daily after midnight with the history up to that midnight; run `feast apply` for the "
        "profile first. The same computation on Dataflow: fraudstream batch-features-beam.",
    )
    _inputs(p)
    _preset(p, "enriched")
    p.add_argument("--as_of", type=_date, metavar="DATE",
                   help="the last as-of day, YYYY-MM-DD (default: the day after the history's "
                   "last transaction)")  # fmt: skip
    p.add_argument("--days", type=int, default=1, help="as-of days ending at --as_of")
    _local_store(p)
    p.add_argument("--materialize", action="store_true",
                   help="load the days written into the online store")  # fmt: skip
    p.set_defaults(func=_run_batch_features)


def _run_batch_features(args: argparse.Namespace) -> int:
    from streaming.batch.batch_features import run_batch_features

    summary = run_batch_features(
        args.input,
        args.preset,
        args.as_of,
        args.days,
        args.feature_store_profile,
        args.feature_repo,
        args.materialize,
        naive_time_zone=args.naive_time_zone,
    )
    _print_summary(summary, width=40)
    return 0


def _add_batch_features_beam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch-features-beam",
        help="the daily batch job as a Beam batch pipeline (Dataflow); Beam options pass through",
        description="The batch views of batch-features, computed by a Beam batch pipeline "
        "(streaming/batch/batch_features_beam.py) and written as parquet under --output_dir "
        "(<view>/as_of=DATE.parquet, a path or gs://; for --days 1 the file batch-features "
        "writes) or appended to BigQuery tables <--bq_dataset>.<view>. Every other argument "
        "is a Beam pipeline option: without --runner it runs here on the "
        "BundleBasedDirectRunner; on Dataflow add --runner DataflowRunner --project P "
        "--region R --temp_location gs://... --sdk_container_image IMAGE (the job's image, "
        "which has the project installed). Load the rows into the online store with `feast "
        "materialize`.",
        allow_abbrev=False,  # an abbreviated Beam option must not be taken for one of ours
    )
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="transactions parquet: a path, glob or gs:// URI (repeatable)")  # fmt: skip
    _preset(p, "enriched")
    p.add_argument(
        "--as_of", required=True, type=_date, metavar="DATE", help="the last as-of day, YYYY-MM-DD"
    )
    p.add_argument("--days", type=int, default=1, help="as-of days ending at --as_of")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output_dir", metavar="DIR",
                     help="parquet under DIR/<view>/ per batch view (path or gs://)")  # fmt: skip
    out.add_argument("--bq_dataset", metavar="DATASET",
                     help="append to BigQuery tables DATASET.<view> (of --project)")  # fmt: skip
    p.add_argument("--num_shards", type=int, default=1,
                   help="files per view (1: as_of=DATE.parquet; more for long ranges)")  # fmt: skip
    p.add_argument("--id_key_secret", metavar="VERSION",
                   help="Secret Manager version of the job's id key (the workers read it); "
                   "without it $FRAUDSTREAM_ID_KEY pseudonymises ids on a local run, or ids "
                   "stay clear")  # fmt: skip
    p.set_defaults(func=_run_batch_features_beam, beam_options=True)


def _run_batch_features_beam(args: argparse.Namespace) -> int:

    from streaming.batch.batch_features_beam import BatchFeaturesJob, run

    ours = ["--input", "--preset", "--as_of", "--days", "--output_dir", "--bq_dataset",
            "--num_shards", "--id_key_secret"]  # fmt: skip
    _refuse_near_misses(args.pipeline_args, ours)
    job = BatchFeaturesJob(
        inputs=tuple(args.input),
        as_of=args.as_of,
        preset=args.preset,
        days=args.days,
        output_dir=args.output_dir,
        bq_dataset=args.bq_dataset,
        num_shards=args.num_shards,
        id_key_secret=args.id_key_secret,
    )
    _log_info()
    run(job, args.pipeline_args)
    where = args.output_dir or f"BigQuery dataset {args.bq_dataset}"
    print(f"batch features of {job.preset} for {job.days} day(s) to {where}")
    return 0


def _refuse_near_misses(pipeline_args: Sequence[str], ours: Sequence[str]) -> None:
    """ValueError for a pass-through flag that is a near miss of one of the command's own
    (``--as-of`` for ``--as_of``): Beam would discard it."""
    import difflib

    for flag in (a.split("=", 1)[0] for a in pipeline_args if a.startswith("--")):
        near = difflib.get_close_matches(flag, ours, n=1, cutoff=0.8)
        if near:
            raise ValueError(f"unknown option {flag}: did you mean {near[0]}?")


def _add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="render drift and alert plots from the scored events",
        description="Read the scored events (the streaming job's parquet parts), group them in "
        "event-time windows and write, per window, the PSI of each model input against the "
        "champion's training reference, the alert rate and latency (monitoring.json, "
        "monitoring.md) with plots: scores, alerts per hour, latency, drift.",
    )
    p.add_argument("--scored", required=True, metavar="DIR",
                   help="directory of part-*.parquet scored events")  # fmt: skip
    p.add_argument("--model_dir", "--model-dir", default=None, metavar="DIR",
                   help="model registry: the drift reference of its current version "
                   "(else the first 20%% of the events by time)")  # fmt: skip
    p.add_argument("--freq", default="1h", help="window length (pandas: 1h, 15min, 1D)")
    p.add_argument("--out", default="out/monitor", metavar="DIR", help="where to write")
    p.set_defaults(func=_run_monitor)


def _run_monitor(args: argparse.Namespace) -> int:
    from streaming.monitoring.command import run_monitor

    summary = run_monitor(args.scored, args.model_dir, args.freq, args.out)
    for key, value in summary.items():
        print(f"  {key:28s} {value}")
    return 0


def _add_redrive(sub: argparse._SubParsersAction) -> None:
    from streaming.redrive import DEFAULT_STAGES, STAGES

    p = sub.add_parser(
        "redrive",
        help="republish dead letters to their input topic, once their cause is fixed",
        description="Pull the dead-letter records of a subscription and republish the payload "
        "of each selected one, as it was sent, to the topic of its stage (parse_transactions "
        "and features: --transactions_topic; parse_labels: --labels_topic). A record is "
        "acknowledged once its message is published; every other one is handed back to the "
        "subscription. Attributes Pub/Sub reserves (goog...) are not republished: a schema "
        "topic stamps them again.",
    )
    p.add_argument("--subscription", required=True,
                   help="the dead-letter subscription, projects/P/subscriptions/S")  # fmt: skip
    p.add_argument("--transactions_topic", help="projects/P/topics/T")
    p.add_argument("--labels_topic", help="projects/P/topics/T")
    p.add_argument("--stage", action="append", choices=STAGES,
                   help=f"redrive this stage's letters (repeatable; default: "
                   f"{', '.join(DEFAULT_STAGES)})")  # fmt: skip
    p.add_argument("--error_contains", metavar="TEXT", help="only letters whose error has TEXT")
    p.add_argument("--max", type=int, default=None, metavar="N", help="look at N letters at most")
    p.add_argument("--dry_run", action="store_true", help="count what would be redriven; "
                   "publish nothing, hand every letter back")  # fmt: skip
    p.set_defaults(func=_run_redrive)


def _run_redrive(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streaming.redrive import DEFAULT_STAGES, Selection, redrive

    if not (args.transactions_topic or args.labels_topic):
        raise ValueError("give --transactions_topic, --labels_topic or both")
    selection = Selection(tuple(args.stage or DEFAULT_STAGES), args.error_contains)
    topics = {"transactions": args.transactions_topic, "labels": args.labels_topic}
    with tqdm(desc="dead letters", unit=" letters", disable=None) as bar:
        report = redrive(args.subscription, topics, selection, args.max, args.dry_run,
                         progress=bar.update)  # fmt: skip
    rows = report.rows()
    width = max((len(action) for action, *_ in rows), default=8)
    for action, stage, error, count in rows:
        print(f"{count:>8,}  {action:<{width}}  {stage:<18}  {error}")
    redriven = sum(report.redriven.values())
    kept = sum(report.kept.values())
    print(f"{redriven:,} redriven, {kept:,} handed back to {args.subscription}")
    failed = sum(n for (why, *_), n in report.kept.items() if why.startswith("publish failed"))
    return 1 if failed else 0


def _add_emulators(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "emulators",
        help="start, stop or show the local Pub/Sub, Bigtable and Cloud Storage emulators",
        description='`up` prints export lines: run  eval "$(fraudstream emulators up)".',
    )
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--only", action="append", choices=emu.NAMES, help="act on this emulator only (repeatable)"
    )
    p.add_argument(
        "--state_dir", "--state-dir", type=Path, default=None,
        help="default: $FRAUDSTREAM_EMULATOR_DIR or ./.emulators",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=90.0, help="start-up timeout, seconds")
    p.set_defaults(func=_run_emulators)


def _run_emulators(args: argparse.Namespace) -> int:
    """Exit codes: 0 ok, 1 failed, 2 no gcloud, 3 not all up."""
    names = tuple(args.only or emu.NAMES)
    directory = emu.resolve_state_dir(args.state_dir)
    if args.action == "up":
        reason = emu.gcloud_available(names)
        if reason is not None:
            print(f"emulators: {reason}", file=sys.stderr)
            return 2
        try:
            infos = emu.up(names, directory, args.timeout)
        except emu.EmulatorError as exc:
            print(f"emulators: {exc}", file=sys.stderr)
            return 1
        for key, value in emu.env_for(infos).items():
            print(f"export {key}={shlex.quote(value)}")
        summary = ", ".join(f"{i.name} on {i.address} (pid {i.pid})" for i in infos.values())
        print(f"emulators up: {summary}; state in {directory}", file=sys.stderr)
        return 0
    if args.action == "down":
        stopped = [name for name, running in emu.down(names, directory).items() if running]
        print(f"emulators stopped: {', '.join(stopped) or 'none was running'}", file=sys.stderr)
        return 0
    current = emu.status(directory)
    for name in names:
        info = current[name]
        state = f"running on {info.address} (pid {info.pid})" if info else "stopped"
        print(f"{name:<9}{state}")
    return 0 if all(current[name] for name in names) else 3


def _add_setup(sub: argparse._SubParsersAction) -> None:
    from streaming.setup import DEFAULT_BUDGET_S, PROFILES, TOPIC_KINDS
    from streaming.store.names import REPO

    p = sub.add_parser(
        "setup",
        help="create the topics, subscriptions, Bigtable table, Feast registry and bucket",
        description="Create what `fraudstream run` needs, each only if missing (a second run "
        "changes nothing): the Pub/Sub topics with one subscription of the same name each, "
        "the Bigtable table and applied Feast repository of the profile, and with --bucket "
        "(or a gs:// --feast_registry) the GCS bucket. The emulator profile uses the emulators "
        'that eval "$(fraudstream emulators up)" exports; gcp a real project. Prints the '
        "`fraudstream run` options that use them.",
    )
    p.add_argument("--feature_store_profile", "--profile", default="emulator", choices=PROFILES,
                   help="emulator (the local emulators) or gcp (a real project)")  # fmt: skip
    p.add_argument(
        "--project", default=None,
        help="default: demo-project on the emulator, else $FRAUDSTREAM_GCP_PROJECT",
    )  # fmt: skip
    for kind in TOPIC_KINDS:
        p.add_argument(
            f"--{kind}_topic", default=kind, metavar="ID",
            help=f"{kind} topic id, also its subscription's (default: %(default)s)",
        )  # fmt: skip
    p.add_argument("--feature_repo", default=str(REPO), metavar="PATH", help="Feast repository")
    p.add_argument("--feast_registry", default=None,
                   help="the Feast registry, e.g. gs://BUCKET/fraudstream/registry.db "
                   "(default: the profile's)")  # fmt: skip
    p.add_argument("--bigtable_project", default=None, help="default: the profile's")
    p.add_argument("--bigtable_instance", default=None, help="default: the profile's")
    p.add_argument("--bucket", default=None, help="a GCS bucket to create (e.g. for gs:// paths)")
    p.add_argument("--bucket_location", default=None, help="the bucket's location (gcp)")
    p.add_argument("--timeout", type=float, default=DEFAULT_BUDGET_S, metavar="S",
                   help="seconds to retry an unreachable service, per resource")  # fmt: skip
    p.set_defaults(func=_run_setup)


def _run_setup(args: argparse.Namespace) -> int:
    from streaming.setup import TOPIC_KINDS, SetupConfig, run_flags, run_setup

    config = SetupConfig(
        profile=args.feature_store_profile,
        project=args.project,
        topics={kind: getattr(args, f"{kind}_topic") for kind in TOPIC_KINDS},
        feature_repo=args.feature_repo,
        feast_registry=args.feast_registry,
        bigtable_project=args.bigtable_project,
        bigtable_instance=args.bigtable_instance,
        bucket=args.bucket,
        bucket_location=args.bucket_location,
        budget_s=args.timeout,
    )
    outcomes = run_setup(config)
    changed = sum(o.state != "exists" for o in outcomes)
    print(
        f"{changed} created or applied, {len(outcomes) - changed} existed "
        f"({config.profile} profile, project {config.resolved_project()}); run the job with:"
    )
    flags = run_flags(config)
    pairs = [" ".join(shlex.quote(f) for f in flags[i : i + 2]) for i in range(0, len(flags), 2)]
    print("fraudstream run " + " \\\n    ".join(pairs) + " \\\n    --model_dir ... --preset ...")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the streaming job (Beam pipeline options; --help lists the job's)",
        description="Run the streaming job: Pub/Sub transactions and labels -> features -> "
        "scores -> alerts, dead letters, scored events, online features. Every argument is a "
        "Beam pipeline option; without --runner it runs locally on the BundleBasedDirectRunner.",
        add_help=False,
    )
    p.set_defaults(func=_run_job, beam_options=True)  # main() passes its arguments through


def _log_info() -> None:
    """The job's ``fraudstream totals:`` lines (INFO) on stderr, beside the warnings.

    Other loggers keep the level logging already has: building ``PipelineOptions`` (the option
    checks) configures it with Beam's defaults (WARNING), and launch errors end with one line.
    """
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")  # if unset
    logging.getLogger("streaming.job.common").setLevel(logging.INFO)


def _run_job(args: argparse.Namespace) -> int:
    if {"-h", "--help"} & set(args.pipeline_args):
        from streaming.job.options import FraudstreamOptions

        parser = _Parser(
            prog="fraudstream run",
            description="The job's options; any other Beam pipeline option (--runner, "
            "--project, --region, --sdk_container_image, ...) is passed to Beam.",
        )
        FraudstreamOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    check_job_flags(args.pipeline_args)
    import logging

    from apache_beam.options.pipeline_options import StandardOptions

    from streaming.job.options import is_local
    from streaming.job.pipeline import pipeline_options, run
    from streaming.local.launch import run_local

    _log_info()
    runner = pipeline_options(args.pipeline_args).view_as(StandardOptions).runner
    try:
        if is_local(runner):
            run_local(args.pipeline_args)
        else:
            run(args.pipeline_args)
    except (ValueError, KeyboardInterrupt):
        raise  # bad options (exit 2) and Ctrl-C (130): main() reports them
    except Exception as exc:  # the pipeline failed while running: say why, in one line
        cause, explained = _reason(exc)
        log = logging.getLogger("fraudstream")
        if explained:  # its message says what to do; the traceback only at debug level
            log.debug("the pipeline failed", exc_info=True)
        else:
            log.exception("the pipeline failed")
        print(f"fraudstream run: the pipeline failed: {cause}", file=sys.stderr)
        return 1
    return 0


def check_job_flags(pipeline_args: Sequence[str]) -> None:
    """ValueError for a flag no Beam options class knows that is a near miss of one of the
    job's own options (Beam would ignore it, e.g. a job without alerts for ``--alert_topic``).
    Every option of every registered ``PipelineOptions`` subclass passes; so does an unknown
    flag unlike any of the job's (Beam warns that it discards it)."""
    import difflib

    from apache_beam.options.pipeline_options import PipelineOptions

    from streaming.job.options import FraudstreamOptions

    parsers: list[argparse.ArgumentParser] = []  # Beam's parser over every options class
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(list(pipeline_args))
    ours = [f"--{name}" for name in FraudstreamOptions([]).get_all_options(current_only=True)]
    for flag in (u.split("=", 1)[0] for u in unknown if u.startswith("--")):
        near = difflib.get_close_matches(flag, ours, n=1, cutoff=0.8)
        if near:
            raise ValueError(f"unknown option {flag}: did you mean {near[0]}?")


def _reason(exc: BaseException) -> tuple[str, bool]:
    """Why, in one line, and whether that line explains it: the first exception of the chain
    raised by this project (its message was written for the user), else a cloud client's error
    said with what to do (:func:`streaming.setup.cloud_error`), else the deepest one with a
    one-line message (a gRPC error's is a multi-line dump; the client library's wrapper of it
    says the same in one line)."""
    from streaming.setup import cloud_error

    chain = [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    ours = [e for e in chain if type(e).__module__.split(".")[0] in _PACKAGES]
    if ours:
        return str(ours[0]), True
    line = cloud_error(exc)
    if line is not None:
        return line, True
    one_line = [str(e) for e in chain if str(e) and "\n" not in str(e).strip()]
    return (one_line[-1] if one_line else str(chain[-1]).strip().splitlines()[0]), False


_PACKAGES = ("streaming", "features", "training")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fraudstream",
        description="Streaming feature and inference engine for real-time fraud detection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_backfill(sub)
    _add_bootstrap(sub)
    _add_demo(sub)
    _add_parity(sub)
    _add_evaluate(sub)
    _add_train(sub)
    _add_promote(sub)
    _add_materialize(sub)
    _add_features(sub)
    _add_batch_features(sub)
    _add_batch_features_beam(sub)
    _add_monitor(sub)
    _add_setup(sub)
    _add_run(sub)
    _add_replay(sub)
    _add_simulate(sub)
    _add_redrive(sub)
    _add_emulators(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status: 0 ok, 1 failed (a cloud
    resource missing or unreachable, no credentials: one line on stderr), 2 bad input or usage
    (argparse's message), 130 interrupted."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "beam_options", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help (0) or a usage error (2), printed by argparse
        return int(exit_.code or 0)
    if getattr(args, "beam_options", False):  # the rest are Beam's pipeline options
        args.pipeline_args = extra
    from features.table import InputError
    from streaming.local.gcs import anonymous_for_emulator, missing_credentials, names_gcs

    given = list(argv if argv is not None else sys.argv[1:])
    if names_gcs(given):  # gs:// reaches a command through its arguments (or the gcp profile)
        missing = missing_credentials(given)
        if missing is not None:  # fail now, not after Beam's 30 s of retries and a refusal
            print(f"fraudstream {args.command}: {missing}", file=sys.stderr)
            return 1
        anonymous_for_emulator()  # on the GCS emulator without credentials: no 30 s of retries

    try:
        return int(args.func(args) or 0)
    except (InputError, ValueError, FileNotFoundError) as exc:  # RegistryError is a ValueError
        print(f"fraudstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fraudstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from streaming.setup import cloud_error

        line = cloud_error(exc)
        if line is None:
            raise  # not a cloud error: a bug, whose traceback is wanted
        print(f"fraudstream {args.command}: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
