"""An election's timings, validated: ``lease > renew_deadline > 1.2 x retry_period``.

Pure values (no I/O), so options can validate them when they are assigned and
when the container is built. The default timings live here, and only here.
"""

from __future__ import annotations

from datetime import timedelta

import attrs

from tickerq.durations import to_timedelta
from tickerq.errors import ConfigurationError

__all__ = ["DEFAULT_LEASE", "DEFAULT_RENEW_DEADLINE", "DEFAULT_RETRY_PERIOD", "LeaseTimings", "check_timings"]

#: Kubernetes' leader-election defaults.
DEFAULT_LEASE = timedelta(seconds=15)
DEFAULT_RENEW_DEADLINE = timedelta(seconds=10)
DEFAULT_RETRY_PERIOD = timedelta(seconds=2)

#: The deadline must leave room for a second renewal attempt after a failed one.
_RETRIES_PER_DEADLINE = 1.2
_NAMES = ("lease", "renew_deadline", "retry_period")


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g} s"


def check_timings(
    *,
    lease: timedelta | None = None,
    renew_deadline: timedelta | None = None,
    retry_period: timedelta | None = None,
    prefix: str = "",
) -> None:
    """Check how the timings given relate; a timing left out (None) is not known yet.

    With all three this is the whole rule. With two, it is what those two need
    for some value of the third to fit, so timings assigned one at a time can be
    checked at each assignment without depending on their order.

    Args:
        lease, renew_deadline, retry_period: The timings known so far.
        prefix: Put before the names in messages (``"leader_"`` for the options).

    Raises:
        ConfigurationError: Naming the fields, their values and the rule.
    """
    lease_name, deadline_name, retry_name = (f"{prefix}{n}" for n in _NAMES)
    if lease is not None and renew_deadline is not None and not lease > renew_deadline:
        raise ConfigurationError(
            f"{lease_name}={_seconds(lease)} must be longer than {deadline_name}={_seconds(renew_deadline)}: "
            "the leader must demote itself before its lease can lapse in Redis"
        )
    if retry_period is None:
        return
    minimum = retry_period * _RETRIES_PER_DEADLINE
    if renew_deadline is not None and not renew_deadline > minimum:
        raise ConfigurationError(
            f"{deadline_name}={_seconds(renew_deadline)} must be longer than {_RETRIES_PER_DEADLINE} x "
            f"{retry_name}={_seconds(retry_period)} (= {_seconds(minimum)}): "
            "the leader needs a second renewal attempt before its deadline"
        )
    if renew_deadline is None and lease is not None and not lease > minimum:
        raise ConfigurationError(
            f"{lease_name}={_seconds(lease)} must be longer than {_RETRIES_PER_DEADLINE} x "
            f"{retry_name}={_seconds(retry_period)} (= {_seconds(minimum)}): no {deadline_name} "
            "fits between them"
        )


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

    lease: timedelta = attrs.field(default=DEFAULT_LEASE, converter=_lease)
    renew_deadline: timedelta = attrs.field(default=DEFAULT_RENEW_DEADLINE, converter=_renew_deadline)
    retry_period: timedelta = attrs.field(default=DEFAULT_RETRY_PERIOD, converter=_retry_period)

    def __attrs_post_init__(self) -> None:
        check_timings(lease=self.lease, renew_deadline=self.renew_deadline, retry_period=self.retry_period)
