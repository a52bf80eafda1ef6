"""Prefect flows: thin wrappers over the registry stages. Only the composition root (`rakd run`) imports it.

With no server configured a flow starts Prefect's ephemeral API server in a subprocess; on a fresh machine its first
start creates and migrates the database, which took longer than Prefect's default 20 seconds on 2 cores (`make
demo` then died with "Timed out while attempting to connect to ephemeral Prefect API server"). It gets 180 seconds
unless the environment says otherwise; this runs before anything imports Prefect's settings.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
