"""Prefect flows for fourm: orchestration and artifacts only (ML logic lives in ``fourm``)."""
