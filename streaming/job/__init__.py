"""The streaming job: what Dataflow workers import, and nothing else.

:mod:`~streaming.job.pipeline` wires the stages; each stage is a composite ``PTransform`` in a
module of its own (parse, ids, entity state under two orderings, scoring, alerts, sinks).
Nothing here imports :mod:`streaming.local`, :mod:`streaming.batch` or a command.
"""
