"""The cohort job's model: targets, cohort syncs, the Amplitude and email settings.

A leaf module beside the cohort transforms (it imports nothing of the project), so that
``transforms/cohorts/`` never imports ``pipeline/``: ``pipeline.cohort_config`` loads and
validates the cohorts file into these frozen dataclasses (what each field means for a user is
its docstring and the README's "Cohort sync"), and the transforms take them as they are.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

__all__ = [
    "ATTRIBUTE_VALUES", "CADENCES", "DEFAULT_ATTRIBUTE", "DEFAULT_MAX_REMOVED_SHARE", "DEFAULT_PARTNER",
    "DEFAULT_TARGET", "DELIVERY_MODES", "MAPPING_TYPES", "RECONCILE", "REGIONS", "RUNS_PER_MONTH", "SOURCES",
    "AmplitudeSettings", "CohortConfig", "CohortSync", "EmailSettings", "Target", "UserMapping",
    "monthly_downloads", "scheduled_downloads",
]

DEFAULT_TARGET = "Default"
CADENCES = ("one_time", "hourly", "daily", "real_time")
SOURCES = ("feed", "download", "snapshot")
RECONCILE = ("none", "daily", "weekly")
DELIVERY_MODES = ("partner", "attribute")
MAPPING_TYPES = ("user_id", "device_id", "user_alias")
ATTRIBUTE_VALUES = ("label", "cohort_id")
REGIONS = ("us", "eu")
DEFAULT_PARTNER = "amplitude"
DEFAULT_ATTRIBUTE = "amplitude_cohorts"
DEFAULT_MAX_REMOVED_SHARE = 0.5
# Download runs a month per schedule: a 31-day month (the worst case), and the weeks a month
# can touch.
RUNS_PER_MONTH = {"hourly": 24 * 31, "daily": 31, "weekly": 5}


@dataclasses.dataclass(frozen=True)
class UserMapping:
    type: str = "user_id"  # one of MAPPING_TYPES
    alias_label: Optional[str] = None  # user_alias only
    alias_source: str = "user_id"  # user_alias only: the Amplitude field holding the alias name

    @property
    def source(self) -> str:
        """The Amplitude field whose value identifies the user in Braze."""
        return {"user_id": "user_id", "device_id": "device_id"}.get(self.type, self.alias_source)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    endpoint: str
    api_key: str  # reference; partner: the Data Import Key (client_secret); attribute: REST key
    delivery: str = "partner"
    user_mapping: UserMapping = UserMapping()
    partner_api_key: Optional[str] = None  # reference; partner delivery only
    partner: str = DEFAULT_PARTNER
    attribute: str = DEFAULT_ATTRIBUTE
    attribute_value: str = "label"
    verify_users: bool = True  # check users exist (/users/export/ids) before sending
    lookup_api_key: Optional[str] = None  # reference; REST key with users.export.ids (partner: required to verify)

    def identity(self) -> dict:
        """What makes this target the same Braze account and key, whatever its name (no secrets:
        only references)."""
        return {"endpoint": self.endpoint, "delivery": self.delivery, "api_key": self.api_key,
                "partner_api_key": self.partner_api_key,
                "partner": self.partner if self.delivery == "partner" else None}

    def key_references(self) -> Tuple[str, ...]:
        return tuple(r for r in (self.api_key, self.partner_api_key, self.lookup_api_key) if r)


@dataclasses.dataclass(frozen=True)
class CohortSync:
    name: str
    cohort_id: str
    cohort_name: str
    target: str
    cadence: str  # one of CADENCES
    source: str = "snapshot"  # one of SOURCES
    reconcile: str = "none"  # feed only: one of RECONCILE
    max_removed_share: float = DEFAULT_MAX_REMOVED_SHARE

    @property
    def schedule(self) -> Optional[str]:
        """How often Cloud Scheduler launches a download run of this sync, or None."""
        if self.source == "download" and self.cadence in ("hourly", "daily"):
            return self.cadence
        if self.source == "feed" and self.reconcile != "none":
            return self.reconcile
        return None


@dataclasses.dataclass(frozen=True)
class AmplitudeSettings:
    api_key: str  # reference: the project's API key (HTTP Basic user)
    secret_key: str  # reference: the project's secret key (HTTP Basic password)
    region: str = "us"
    monthly_download_budget: int = 500
    budget_reserve: int = 50
    max_cohort_size: int = 2_000_000
    endpoint: Optional[str] = None  # local testing only (the stand-in); else by region

    @property
    def base_url(self) -> str:
        if self.endpoint:
            return self.endpoint
        return "https://analytics.eu.amplitude.com" if self.region == "eu" else "https://amplitude.com"

    def key_references(self) -> Tuple[str, ...]:
        return (self.api_key, self.secret_key)


@dataclasses.dataclass(frozen=True)
class EmailSettings:
    smtp_host: str
    sender: str
    recipients: Tuple[str, ...]
    smtp_port: int = 25
    starttls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None  # reference
    timeout_seconds: float = 10.0
    ssl: bool = False  # SMTPS (implicit TLS, usually port 465)


@dataclasses.dataclass(frozen=True)
class CohortConfig:
    targets: Tuple[Target, ...]
    syncs: Tuple[CohortSync, ...]
    email: Optional[EmailSettings] = None
    legacy: bool = False  # read from the single-key form as the target "Default"
    amplitude: Optional[AmplitudeSettings] = None

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def sync(self, name: str) -> CohortSync:
        for s in self.syncs:
            if s.name == name:
                return s
        raise KeyError(name)

    def feed_syncs(self) -> Tuple[CohortSync, ...]:
        return tuple(s for s in self.syncs if s.source == "feed")

    def key_references(self) -> Tuple[str, ...]:
        """Every secret reference in the file (what reports and emails are scrubbed of)."""
        refs: List[str] = [r for t in self.targets for r in t.key_references()]
        if self.amplitude:
            refs += self.amplitude.key_references()
        if self.email and self.email.password:
            refs.append(self.email.password)
        return tuple(refs)


def scheduled_downloads(syncs) -> List[Tuple[CohortSync, int]]:
    """``[(sync, download runs a month)]`` for every sync Cloud Scheduler launches."""
    return [(s, RUNS_PER_MONTH[s.schedule]) for s in syncs if s.schedule]


def monthly_downloads(syncs) -> Tuple[int, str]:
    """``(downloads a month, the arithmetic as text)`` of the scheduled download runs."""
    counts: dict = {}
    for sync, runs in scheduled_downloads(syncs):
        counts[sync.schedule] = counts.get(sync.schedule, 0) + 1
    parts = [f"{n} {kind} × {RUNS_PER_MONTH[kind]}" for kind, n in sorted(counts.items())]
    total = sum(n * RUNS_PER_MONTH[kind] for kind, n in counts.items())
    return total, " + ".join(parts) if parts else "none scheduled"
