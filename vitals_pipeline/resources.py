"""Dagster resources: the ACE API, configured in one place."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from vitals_pipeline.ace import wire
from vitals_pipeline.ace.client import AceClient, RetrySettings
from vitals_pipeline.config import DEFAULT_API_URL


class AceResource(dg.ConfigurableResource):
    """The ACE IoT API.

    The key is read from the environment variable named by `api_key_env` when a run starts, so
    that it never enters Dagster's run config, event log or UI.
    """

    api_url: str = DEFAULT_API_URL
    api_key_env: str = "ACE_API_KEY"
    page_size: int = Field(default=wire.DEFAULT_PAGE_SIZE, description="ACE_PAGE_SIZE")
    timeout_seconds: float = 60.0
    max_attempts: int = 8
    retry_budget_seconds: float = 300.0

    def client(self) -> AceClient:
        """An open client; raises a non-retryable Failure when the key is missing."""
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise dg.Failure(
                description=(
                    f"{self.api_key_env} is not set: the run cannot call ACE without an API key. "
                    f"Set {self.api_key_env} in the environment of the Dagster code location "
                    "(and of dagster-daemon) and re-run."
                ),
                allow_retries=False,
            )
        return AceClient(
            self.api_url,
            key,
            page_size=self.page_size,
            timeout=self.timeout_seconds,
            retry=RetrySettings(
                max_attempts=self.max_attempts, budget_seconds=self.retry_budget_seconds
            ),
        )
