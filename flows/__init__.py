"""Prefect flows for fourm: orchestration and artifacts only (ML logic lives in ``fourm``).

When ``FOURM_PREFECT_API_URL`` is set, the flows report to that Prefect server;
otherwise Prefect's own settings apply (a temporary local server by default).
"""

import os

from fourm.settings import get_settings

if (_api_url := get_settings().prefect_api_url) and "PREFECT_API_URL" not in os.environ:
    os.environ["PREFECT_API_URL"] = _api_url
