"""Beam's ``gs://`` file system on the Cloud Storage emulator, without waiting for credentials.

Beam looks Google credentials up once per process; when there are none, it retries four times
with backoff (about 30 s) and then connects anonymously. With ``STORAGE_EMULATOR_HOST`` set and
no Application Default Credentials the answer is known at once, and
:func:`anonymous_for_emulator` gives it to Beam first. Local use only: Dataflow's workers have
credentials and no emulator.
"""

from __future__ import annotations

import logging
import os

from streaming.local.runner.guard import Replaced, misfit

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_AUTH = "apache_beam.internal.gcp.auth"
RELIED_ON = (  # the once-per-process cache filled here: no lookup once it is initialised
    Replaced(f"{_AUTH}:_Credentials.get_service_credentials", "6cfbe51f7d9bb251"),
)
log = logging.getLogger(__name__)


def anonymous_for_emulator() -> bool:
    """Make Beam's ``gs://`` client of this process anonymous now, where ``STORAGE_EMULATOR_HOST``
    is set and Google's Application Default Credentials find nothing; returns whether it did.
    Where Beam's credential cache is not the code this was written for, a warning and False:
    Beam then finds out itself, as slowly as before."""
    if not os.environ.get(EMULATOR_ENV):
        return False
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default()
    except DefaultCredentialsError:
        pass
    else:
        return False  # Beam finds them at its first try: nothing to wait for
    reason = misfit(RELIED_ON)
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
