"""The edge: reports, locking, the transaction of a repair."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from unpacked import repository
from unpacked.errors import PublishError
from unpacked.publish import Publisher
from unpacked.verify._checks import check
from unpacked.verify._model import Change, Finding, Kind, Remedy, Snapshot, VerifyOptions
from unpacked.verify._repair import apply, plan_repair
from unpacked.verify._scan import scan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    repository: str
    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings

    def references_to_reconvert(self) -> tuple[str, ...]:
        """Images that need ``convert-single-image``, sorted."""
        return tuple(
            sorted(
                {
                    ref
                    for finding in self.findings
                    if finding.remedy is Remedy.RECONVERT
                    for ref in finding.references
                }
            )
        )


@dataclass(frozen=True)
class RepairReport:
    before: VerifyReport
    changes: tuple[Change, ...]
    recovered: tuple[PurePosixPath, ...]
    """Staging areas the publisher's recovery dealt with when the repair opened."""
    after: VerifyReport


def _scan(publisher: Publisher, *, private: bool) -> Snapshot:
    try:
        return scan(publisher.root, private=publisher.private_area() if private else None)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise PublishError(f"{publisher.spec}: cannot read{where}: {exc.strerror or exc}") from exc


def verify_repository(
    publisher: Publisher,
    *,
    options: VerifyOptions = VerifyOptions(),
    lock_timeout: float = 600.0,
) -> VerifyReport:
    """Check the repository; changes nothing."""
    # Held without a transaction, so without the recovery that would change the repository.
    with publisher.locked(lock_timeout=lock_timeout):
        snapshot = _scan(publisher, private=True)
    report = VerifyReport(publisher.spec, check(snapshot, options))
    logger.info("%s: %d finding(s)", publisher.spec, len(report.findings))
    return report


def repair_repository(
    publisher: Publisher,
    *,
    options: VerifyOptions = VerifyOptions(),
    lock_timeout: float = 600.0,
    now: Callable[[], str] = repository.utc_now,
) -> RepairReport:
    """Check, fix what needs no registry in one transaction, and check again."""
    before = verify_repository(publisher, options=options, lock_timeout=lock_timeout)
    changes: tuple[Change, ...] = ()
    if any(f.fix is not None or f.remedy is Remedy.REPAIR for f in before.findings):
        with publisher.transaction(lock_timeout=lock_timeout) as tx:
            # Recovery has run; our own staging area is the only one left, so skip them.
            snapshot = _scan(publisher, private=False)
            changes = plan_repair(snapshot, check(snapshot, options), now())
            apply(changes, tx)
    recovered = tuple(f.path for f in before.findings if f.kind is Kind.TRANSACTION_STALE)
    after = verify_repository(publisher, options=options, lock_timeout=lock_timeout)
    return RepairReport(before, changes, recovered, after)
