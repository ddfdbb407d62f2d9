"""An election's timings, validated: ``lease > renew_deadline > 1.2 x retry_period``.

Pure values (no I/O), so options can validate them when the container is built.
"""

from __future__ import annotations

from datetime import timedelta

import attrs

from tickerq.durations import to_timedelta
from tickerq.errors import ConfigurationError

__all__ = ["LeaseTimings"]


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g} s"


def _lease(value: object) -> timedelta:
    return to_timedelta(value, field="lease")


def _renew_deadline(value: object) -> timedelta:
    return to_timedelta(value, field="renew_deadline")


def _retry_period(value: object) -> timedelta:
    return to_timedelta(value, field="retry_period")


@attrs.frozen(kw_only=True)
class LeaseTimings:
    """An election's timings (``timedelta`` or seconds); ``lease > renew_deadline > 1.2 x retry_period``.

    Raises:
        ConfigurationError: Naming the fields and their values.
    """

    lease: timedelta = attrs.field(converter=_lease)
    renew_deadline: timedelta = attrs.field(converter=_renew_deadline)
    retry_period: timedelta = attrs.field(converter=_retry_period)

    def __attrs_post_init__(self) -> None:
        lease, deadline, retry = self.lease, self.renew_deadline, self.retry_period
        if not lease > deadline:
            raise ConfigurationError(
                f"lease={_seconds(lease)} must be longer than renew_deadline={_seconds(deadline)}: "
                "the leader must demote itself before its lease can lapse in Redis"
            )
        if not deadline > retry * 1.2:
            raise ConfigurationError(
                f"renew_deadline={_seconds(deadline)} must be longer than 1.2 x "
                f"retry_period={_seconds(retry)} (= {_seconds(retry * 1.2)}): "
                "the leader needs a second renewal attempt before its deadline"
            )
