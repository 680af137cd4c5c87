"""``jellyfin-watcher refresh``: one refresh, now, by the daemon's rules (for cron).

Every root counts as changed as a whole; the steps are the daemon's own
(:func:`watcher.core.decide.decide`): the health gate, a running scan waited for (up to
``max_wait``), the loss guard — opened by ``--allow-removals N`` for a confirmed clean-up —
and the roots probed again when Jellyfin was asked anything. Exit 0 refreshed (or, in a
dry run, what would be sent printed), 1 suppressed or refused (the reason printed), 3
Jellyfin unreachable or the key rejected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from watcher.commands.common import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    client_for,
    learn_mounts,
    probe,
    roots_of,
)
from watcher.config import Config, Root
from watcher.core import decide as steps
from watcher.core.debounce import Batch
from watcher.core.decide import Attempt, Situation, decide
from watcher.core.gate import RootView
from watcher.core.guard import Limits, Prediction
from watcher.core.health import Health
from watcher.core.refresher import part
from watcher.core.scope import plan
from watcher.core.serverview import reasons as view_reasons
from watcher.edges.backup import BackupUnavailable, create_backup
from watcher.edges.jellyfin import JellyfinClient
from watcher.edges.predict import predict
from watcher.edges.serverview import check_roots
from watcher.edges.workers import send
from watcher.errors import JellyfinError

MAX_STEPS = 100
"""Steps at most (each probe, question to Jellyfin or send is one): a bound, never reached
unless storage flaps between every two probes."""


def refresh(
    config: Config,
    allow_removals: int = 0,
    say: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh once if the rules allow it; returns the exit code. Raises JellyfinError."""
    client = None if config.dry_run else client_for(config, "to refresh")
    roots = roots_of(config, client)
    keys = frozenset(str(root.path) for root in roots)
    batch = Batch(keys, len(roots), 0.0, 0.0, whole_roots=keys)
    attempt = Attempt(started_at=clock())
    results = probe(config, roots)
    probed_at = attempt.started_at
    scan_deadline = attempt.started_at + config.watch.max_wait
    backed_up: int | None = None
    for _ in range(MAX_STEPS):
        now = clock()
        situation = Situation(
            batch, 0.0, _views(results, now, config), probed_at, attempt, dry_run=client is None, allowed=allow_removals,
            backed_up=backed_up,
        )
        decision = decide(now, situation, config)
        match decision.step:
            case steps.HoldBack():
                for health in results:
                    if not health.healthy and health.root.health_gate:
                        say(f"refresh suppressed: {health.describe()}")
                return EXIT_UNHEALTHY
            case steps.ProbeRoots():
                probed_at = clock()
                results = probe(config, roots)
            case steps.AskScanRunning():
                assert client is not None
                running = client.library_scan_running()
                attempt.asked_at = clock()
                if not running:
                    attempt.scan_idle = True
                elif clock() >= scan_deadline:
                    say(f"refresh suppressed: a library scan was still running after {config.watch.max_wait:g} s; not interrupting it")
                    return EXIT_UNHEALTHY
                else:
                    sleep(min(steps.SCAN_RUNNING_RECHECK, max(0.0, scan_deadline - clock())))
            case steps.PredictRemovals(library_ids=library_ids):
                assert client is not None
                attempt.predictions = _predict(config, client, library_ids)
                attempt.predicted_for = library_ids
                attempt.asked_at = clock()
                _report(config, attempt.predictions, allow_removals, say)
            case steps.Refuse():
                return EXIT_UNHEALTHY
            case steps.CompareViews(roots=ready):
                assert client is not None
                in_scope = _in_scope(results, ready, config)
                attempt.views = view_reasons(check_roots(client, config, in_scope))
                attempt.asked_at = clock()
            case steps.HoldForViews(reasons=reasons):
                for reason in reasons:
                    say(f"refresh held: {reason}")
                return EXIT_UNHEALTHY
            case steps.BackUpFirst(removals=removals):
                assert client is not None
                if not _back_up(config, client, removals, say):
                    return EXIT_UNHEALTHY
                backed_up = removals
                attempt.asked_at = clock()
            case steps.SendRefresh(roots=ready):
                learn_mounts(config, results)
                return _send(config, client, batch, ready, roots, results, say)
            case _:  # Idle, WaitUntil, CheckOpenFiles: not for a batch due now without open files
                raise AssertionError(f"unexpected step {decision.step!r}")
    say("refresh suppressed: the roots kept changing state while being checked")
    return EXIT_UNHEALTHY


def _views(results: Sequence[Health], now: float, config: Config) -> dict[str, RootView]:
    return {
        str(health.root.path): RootView(
            health.root.library_id,
            "" if health.healthy or not health.root.health_gate else health.describe(),
            not health.root.health_gate and not health.healthy,
        )
        for health in results
    }


def _in_scope(results: Sequence[Health], ready: frozenset[str], config: Config) -> list[Health]:
    """The roots whose libraries a refresh of ``ready`` scans (every root, server-wide)."""
    libraries = {health.root.library_id for health in results if str(health.root.path) in ready}
    if config.refresh.scope == "server" or None in libraries:
        return list(results)
    return [health for health in results if health.root.library_id in libraries]


def _back_up(config: Config, client: JellyfinClient, removals: int, say: Callable[[str], None]) -> bool:
    """A backup before a refresh that removes items; False when the refresh must not go."""
    why = f"before removing {removals} item{'s' if removals != 1 else ''}" if removals else "before a confirmed clean-up"
    try:
        archive = create_backup(client, config.backup.contents, config.backup.timeout, config.jellyfin.server)
    except BackupUnavailable as error:
        say(f"no backup {why}: {error}; the loss guard alone applies")
        return True
    except JellyfinError as error:
        if config.backup.hold_on_failure:
            say(f"refresh held: the backup {why} failed: {error} (backup.hold_on_failure = false refreshes without one)")
            return False
        say(f"backup {why} failed: {error}; refreshing without one (backup.hold_on_failure = false)")
        return True
    say(f"backup written {why}: {archive.describe()}")
    return True


def _predict(config: Config, client: JellyfinClient, library_ids: frozenset[str] | None) -> tuple[Prediction, ...]:
    libraries = client.libraries()
    if library_ids is not None:
        libraries = [library for library in libraries if library.item_id in library_ids]
    local = config.map_path
    return tuple(predict(client, library, lambda path: str(local(path)), config.guard.timeout) for library in libraries)


def _report(config: Config, predictions: Sequence[Prediction], allowed: int, say: Callable[[str], None]) -> None:
    """One line per library the guard refuses (with the command that confirms a deliberate
    clean-up), or whose removals ``--allow-removals`` lets through."""
    for prediction in predictions:
        count, share = config.guard.limits_for(prediction.library.name)
        if prediction.refused(Limits(count, share), allowed=allowed):
            say(f"refresh refused: {prediction.describe()}")
            if prediction.hint:
                say(f"  {prediction.hint}")
        elif prediction.missing and prediction.missing <= allowed:
            say(f"removals allowed: {prediction.describe()}")


def _send(
    config: Config,
    client: JellyfinClient | None,
    batch: Batch,
    ready: frozenset[str],
    roots: Sequence[Root],
    results: Sequence[Health],
    say: Callable[[str], None],
) -> int:
    by_key = {str(root.path): root for root in roots}
    for request in plan(part(batch, ready), by_key, config.refresh.scope, config.jellyfin_path):
        if client is None:
            say(f"dry run: would send {request.describe()}")
            continue
        send(client, request)
        say(f"refresh sent: {request.describe()}")
    held = batch.roots - ready
    if not held:
        return EXIT_OK
    blocked = [health for health in results if not health.healthy and health.root.health_gate]
    for request in plan(part(batch, held), by_key, config.refresh.scope, config.jellyfin_path):
        reasons = "; ".join(health.describe() for health in blocked if health.root.library_id == request.library_id)
        say(f"refresh suppressed: {request.describe()}: {reasons}")
    return EXIT_UNHEALTHY
