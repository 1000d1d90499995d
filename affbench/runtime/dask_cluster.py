"""Run independent pieces of work on a Dask distributed cluster and get their results as they finish.

Used by ``affbench prepare ... --scheduler ADDRESS`` (one unit per task) and by ``affbench
run-benchmark ... --scheduler ADDRESS`` (one job per task). The calling process stays the only one
that writes the run's bookkeeping (a manifest, a run folder): tasks return their outcome and the
caller records each one as it arrives, exactly as with local worker processes.

Dask is an optional dependency (``pip install "affbench[dask]"``). Nothing here imports it until
a scheduler is asked for, and a missing install or an unreachable scheduler is one
:class:`ClusterError` sentence, said before any work starts.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from affbench.errors import AffbenchError

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = 'pip install "affbench[dask]"'


class ClusterError(AffbenchError):
    """Dask is missing, the scheduler cannot be reached, or the cluster lost a task."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError(
            f"Running on a Dask cluster needs Dask's distributed scheduler, which is not installed; "
            f"install it with {INSTALL_HINT}."
        ) from None
    return distributed


def _connect_timeout() -> float:
    """Seconds to wait for a scheduler: Dask's own setting (``distributed.comm.timeouts.connect``)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s"))


def _probe(address: str, timeout: float) -> None:
    """Open and close a plain TCP connection to a ``tcp://`` scheduler first.

    A ``Client`` that fails to connect leaves an object whose clean-up prints a traceback when
    it is collected; a refused or unresolvable address is found here without one.
    """
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    scheme, location = parse_address(address)
    if scheme != "tcp":
        return  # tls://, ucx://, ...: the Client's own connection attempt decides
    host, port = parse_host_port(location, default_port=8786)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, socket.timeout):
            reason = f"no answer within {timeout:g} s"
        raise ClusterError(
            f"Cannot reach the Dask scheduler at {address} ({reason}); start one with `dask scheduler` "
            "(and workers with `dask worker ADDRESS`) or check the address."
        ) from None


def connect(scheduler: Any):
    """A ``distributed.Client`` for ``scheduler``: an address such as ``tcp://host:8786``, or a
    ``Client`` (returned as it is)."""
    distributed = _distributed()
    if isinstance(scheduler, distributed.Client):
        return scheduler
    address = str(scheduler).strip()
    if not address:
        raise ClusterError("The Dask scheduler address is empty; give one such as tcp://host:8786.")
    timeout = _connect_timeout()
    try:
        _probe(address, timeout)
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except ClusterError:
        raise
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"Cannot connect to the Dask scheduler at {address} ({exc}); check the address "
            "(tcp://host:8786) and that `dask scheduler` runs there."
        ) from None


def default_client():
    """The ``Client`` this process made last (Dask's default), for ``backend="dask"`` callers."""
    distributed = _distributed()
    try:
        return distributed.get_client()
    except ValueError:
        raise ClusterError(
            'backend="dask" needs a Dask Client in this process; pass scheduler="tcp://host:8786" (or a Client) '
            "instead."
        ) from None


@contextmanager
def session(scheduler: Any) -> Iterator[Any]:
    """A connected ``Client`` for the ``with`` block; closed at the end only if it was made here."""
    client = connect(scheduler)
    try:
        yield client
    finally:
        if client is not scheduler:
            client.close()


def optional_session(scheduler: Any) -> AbstractContextManager[Any]:
    """:func:`session` where a scheduler is given; else a block holding ``None`` (a local run).

    The client connects before any work starts, so a wrong address is said at once.
    """
    return nullcontext(None) if scheduler is None else session(scheduler)


def completed(
    client: Any,
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    name: Callable[[T], str] = str,
    after: Mapping[str, Iterable[str]] | None = None,
) -> Iterator[tuple[T, R]]:
    """Run every item as one cluster task; yield ``(item, result)`` in the order they finish.

    ``name(item)`` identifies an item (in the task keys and in error sentences). ``after`` maps an
    item's name to the names of items that must finish first: its task starts only then, as
    ``fn(item, *their results)`` (names not among ``items`` are taken as finished already, and
    an item that waits for nothing runs as ``fn(item)``). ``items`` must list sources before the
    items that wait for them. ``fn`` should report its failures in its result, so that the items
    waiting for it can see them: an exception it raises is raised here and stops the iteration.

    Tasks are never taken from a cache (every call runs again) and, when the caller stops early
    (an error, Ctrl-C), the tasks not started yet are cancelled; one already running finishes on
    its worker and its result is dropped.
    """
    distributed = _distributed()
    after = after or {}
    run_id = uuid.uuid4().hex[:8]
    futures: dict[str, Any] = {}
    by_key: dict[str, T] = {}
    for item in items:
        label = name(item)
        sources = [futures[s] for s in after.get(label, ()) if s in futures]
        future = client.submit(fn, item, *sources, key=f"affbench-{label}-{run_id}", pure=False)
        futures[label] = future
        by_key[future.key] = item
    pending = list(futures.values())
    try:
        for future in distributed.as_completed(pending, loop=client.loop):
            item = by_key[future.key]
            try:
                result = future.result()
            except distributed.KilledWorker:
                raise ClusterError(
                    f"The Dask workers running {name(item)} died each time it was tried (out of memory, or a crash "
                    "in native code); finished work is kept, fix the cause and run the same command again."
                ) from None
            except (OSError, TimeoutError, distributed.client.FutureCancelledError) as exc:
                raise ClusterError(
                    f"Lost the Dask cluster while {name(item)} ran ({type(exc).__name__}: {exc}); finished work is "
                    "kept, run the same command again to resume."
                ) from None
            yield item, result
    finally:
        unfinished = [f for f in pending if not f.done()]
        if unfinished:
            try:
                client.cancel(unfinished)
            except Exception:  # noqa: BLE001 - a cluster already gone has nothing left to cancel
                pass
