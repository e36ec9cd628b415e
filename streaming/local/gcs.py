"""A command's ``gs://`` access without waiting for Beam's credential retries.

Beam looks Google credentials up once per process; when there are none, it retries four times
with backoff (about 30 s) and then connects anonymously. Where there are no Application Default
Credentials the answer is known at once: on the Cloud Storage emulator (``STORAGE_EMULATOR_HOST``)
:func:`anonymous_for_emulator` gives it to Beam first; elsewhere a private bucket would refuse
the anonymous client, and :func:`missing_credentials` says so before anything starts. Local use
only: Dataflow's workers have credentials and no emulator.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# The once-per-process cache filled here (no lookup once it is initialised), as the path and
# source digest of a runner patch's ``Replaced``: the guard is imported only when needed, since
# importing it loads every runner patch and Beam.
_CACHE_CODE = (
    "apache_beam.internal.gcp.auth:_Credentials.get_service_credentials",
    "6cfbe51f7d9bb251",
)
log = logging.getLogger(__name__)


def names_gcs(args: Sequence[str]) -> bool:
    """Whether one of a command's ``args`` names a ``gs://`` URI."""
    return any("gs://" in a for a in args)


def has_default_credentials() -> bool:
    """Whether Google's Application Default Credentials find any (a file, gcloud's login, or a
    metadata server)."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default()
    except DefaultCredentialsError:
        return False
    return True


def missing_credentials(args: Sequence[str]) -> str | None:
    """Why a command given ``args`` would fail on ``gs://``: one of them names a ``gs://`` URI,
    ``STORAGE_EMULATOR_HOST`` is not set and there are no Application Default Credentials
    (Beam would retry for about 30 s, then reach the bucket anonymously and be refused).
    None when none of that stands in the way."""
    if os.environ.get(EMULATOR_ENV) or not names_gcs(args):
        return None
    if has_default_credentials():
        return None
    return (
        "no Google credentials for gs://: run `gcloud auth application-default login` (or set "
        f"GOOGLE_APPLICATION_CREDENTIALS), or set {EMULATOR_ENV} for the GCS emulator"
    )


def anonymous_for_emulator() -> bool:
    """Make Beam's ``gs://`` client of this process anonymous now, where ``STORAGE_EMULATOR_HOST``
    is set and Google's Application Default Credentials find nothing; returns whether it did.
    Where Beam's credential cache is not the code this was written for, a warning and False:
    Beam then finds out itself, as slowly as before."""
    if not os.environ.get(EMULATOR_ENV):
        return False
    if has_default_credentials():
        return False  # Beam finds them at its first try: nothing to wait for
    from streaming.local.runner.guard import Replaced, misfit

    reason = misfit((Replaced(*_CACHE_CODE),))
    if reason is not None:
        log.warning("gs:// on the emulator waits for Beam's credential retries: %s", reason)
        return False
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        if not auth._Credentials._credentials_init:
            auth._Credentials._credentials = None  # what Beam's lookup ends with: anonymous
            auth._Credentials._credentials_init = True
    log.debug("%s is set and there are no Google credentials: gs:// is anonymous", EMULATOR_ENV)
    return True
