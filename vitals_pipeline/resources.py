"""Dagster resources: the ACE API, configured in one place."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import Field

from vitals_pipeline.ace import wire
from vitals_pipeline.ace.client import AceClient, RetrySettings
from vitals_pipeline.ace.session import AceSession
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
    # A request that keeps failing for this long fails its site: the next tick or the catch-up
    # tries again, and a broken site does not hold a fleet run (and the pool) for minutes.
    retry_budget_seconds: float = 20.0

    max_in_flight: int = Field(
        default=16,
        ge=1,
        description="Requests in flight at once across all the sites of a run (session()).",
    )

    def client(self) -> AceClient:
        """An open client with its own connection pool and no gate, for single calls; raises a
        non-retryable Failure when the key is missing."""
        return AceClient(
            self.api_url,
            self._api_key(),
            page_size=self.page_size,
            timeout=self.timeout_seconds,
            retry=self._retry_settings(),
        )

    @contextmanager
    def session(self, max_in_flight: int | None = None) -> Iterator[AceSession]:
        """One connection pool and one RequestGate for all the sites of a run:
        `session.client(deadline=...)` per site, from any thread; `session.gate_stats` for the
        run's figures. `max_in_flight` defaults to the resource's. Raises a non-retryable
        Failure when the key is missing or the page size is one ACE refuses."""
        self._check_page_size()
        with AceSession(
            self.api_url,
            self._api_key(),
            max_in_flight=max_in_flight or self.max_in_flight,
            page_size=self.page_size,
            timeout=self.timeout_seconds,
            retry=self._retry_settings(),
        ) as session:
            yield session

    def _check_page_size(self) -> None:
        # A page size from run config is checked here, before any site is fetched: raised as it
        # is, the step's message would be Dagster's "error occurred while executing op" and the
        # reason only in the cause.
        try:
            wire.check_page_size(self.page_size)
        except wire.PageSizeError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None

    def _retry_settings(self) -> RetrySettings:
        return RetrySettings(max_attempts=self.max_attempts, budget_seconds=self.retry_budget_seconds)

    def _api_key(self) -> str:
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
        return key
