"""The farm's object store, from the settings: ``CIQ_ARTIFACTS_URL`` or, without it, a directory
in the temp dir (``serve`` and ``standalone`` say which at start). Only the web app (and its
janitor) opens it: workers go through the web app with their job token."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ci_queue.objects import ObjectStore, open_store
from ci_queue.settings import Settings


def default_objects_url() -> str:
    return (Path(tempfile.gettempdir()) / "ci-queue" / "objects").as_uri()


def objects_url(settings: Settings) -> str:
    return settings.artifacts_url or default_objects_url()


def objects_from_settings(settings: Settings) -> ObjectStore:
    return open_store(objects_url(settings), s3_endpoint_url=settings.s3_endpoint_url or None,
                      s3_region=settings.s3_region or None)
