"""The feature store: the reader/writer contract, its Feast and in-memory implementations,
Feast object names derived from the spec, our Bigtable online store, and materialization.

``feature_repo/definitions.py`` imports only :mod:`streaming.store.names`.
"""
