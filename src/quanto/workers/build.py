"""Build Worker objects per task queue. CPU-bound stages run in a process pool (spawned, so nothing
Temporal-related crosses a fork); I/O and training stages run in threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import signal
from contextlib import AsyncExitStack
from datetime import timedelta
from multiprocessing.managers import SyncManager

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    SharedStateManager,
    Worker,
)

from quanto.activities import ingest as ingest_acts
from quanto.activities import pipeline as acts
from quanto.activities import retrain as retrain_acts
from quanto.activities import sweep as sweep_acts
from quanto.activities import trading as trading_acts
from quanto.activities import training as training_acts
from quanto.contracts import (
    ALL_QUEUES,
    PIPELINE_STAGES,
    QUEUE_COMPUTE,
    QUEUE_CONTROL,
    QUEUE_EXEC,
    QUEUE_IO,
    QUEUE_TRAIN,
)
from quanto.observability.metrics import count_retry
from quanto.workflows.ingest import IngestionWorkflow
from quanto.workflows.pipeline import ResearchPipelineWorkflow
from quanto.workflows.retrain import RetrainWorkflow
from quanto.workflows.sweep import SweepWorkflow
from quanto.workflows.trading import TradingDayWorkflow
from quanto.workflows.training import TrainingWorkflow

WORKFLOWS = {
    QUEUE_CONTROL: [
        ResearchPipelineWorkflow,
        TrainingWorkflow,
        SweepWorkflow,
        IngestionWorkflow,
        RetrainWorkflow,
        TradingDayWorkflow,
    ]
}
PROCESS_POOL_QUEUES = {"quanto-compute"}
# quanto-exec runs a session loop per account for hours next to short control activities (a halt
# must never wait for a free thread), so it gets threads beyond the CPU count.
EXEC_THREADS = 16
HEARTBEAT_THROTTLE = timedelta(seconds=2)


def _ignore_stop_signals() -> None:
    """Pool and manager processes leave SIGINT/SIGTERM to the worker, which shuts them down in order.

    Ctrl-C in a terminal (or a kill of the process group) signals every process in the group; if the
    helpers died first, the worker could neither finish nor report its running activities.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class CountRetries(Interceptor):
    """Counts activity attempts after the first (quanto_activity_retries_total), for every activity of
    the worker. Interceptors run in the worker's own process, also for activities of a process pool."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountRetriesInbound(next)


class _CountRetriesInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> object:
        info = activity.info()
        if info.attempt > 1:
            count_retry(info.activity_type)
        return await super().execute_activity(input)


def activities_by_queue() -> dict[str, list]:
    """The activity functions each task queue serves."""
    out: dict[str, list] = {}
    for spec in PIPELINE_STAGES:
        out.setdefault(spec.queue, []).append(acts.STAGE_ACTIVITIES[spec.name])
    out.setdefault(QUEUE_TRAIN, []).extend(training_acts.TRAINING_ACTIVITIES)
    out.setdefault(QUEUE_COMPUTE, []).extend(sweep_acts.SWEEP_ACTIVITIES)
    out.setdefault(QUEUE_IO, []).append(acts.record_run)
    out[QUEUE_IO].extend(ingest_acts.INGEST_ACTIVITIES)
    for queue, activities in retrain_acts.RETRAIN_ACTIVITIES.items():
        out.setdefault(queue, []).extend(activities)
    out.setdefault(QUEUE_EXEC, []).extend(trading_acts.TRADING_ACTIVITIES)
    return out


def pool_size() -> int:
    """Concurrent activities per queue (`QUANTO_WORKER_PROCESSES`, default: CPU count)."""
    return int(os.environ.get("QUANTO_WORKER_PROCESSES", os.cpu_count() or 2))


async def run_workers(
    client: Client, queues: list[str] | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run workers for `queues` (all with work by default) until `stop` is set."""
    wanted = queues or list(ALL_QUEUES)
    acts_by_queue = activities_by_queue()
    stop = stop or asyncio.Event()
    async with AsyncExitStack() as stack:
        workers = []
        for queue in wanted:
            workflows, activities = WORKFLOWS.get(queue, []), acts_by_queue.get(queue, [])
            if not workflows and not activities:
                continue  # e.g. quanto-exec before the trading issue lands
            kwargs: dict = {}
            if activities:
                if queue in PROCESS_POOL_QUEUES:
                    ctx = multiprocessing.get_context("spawn")
                    executor = stack.enter_context(
                        concurrent.futures.ProcessPoolExecutor(
                            max_workers=pool_size(), mp_context=ctx, initializer=_ignore_stop_signals
                        )
                    )
                    manager = SyncManager(ctx=ctx)
                    manager.start(initializer=_ignore_stop_signals)
                    stack.callback(manager.shutdown)
                    kwargs["shared_state_manager"] = SharedStateManager.create_from_multiprocessing(manager)
                else:
                    size = EXEC_THREADS if queue == QUEUE_EXEC else pool_size()
                    executor = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=size))
                kwargs.update(
                    activity_executor=executor,
                    max_concurrent_activities=EXEC_THREADS if queue == QUEUE_EXEC else pool_size(),
                )
            workers.append(
                Worker(
                    client,
                    task_queue=queue,
                    workflows=workflows,
                    activities=activities,
                    # Heartbeats carry progress the CLI shows; the SDK would otherwise hold them back
                    # for 80 % of the heartbeat timeout.
                    max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
                    interceptors=[CountRetries()],
                    **kwargs,
                )
            )
        if not workers:
            raise ValueError(f"no work on queues {wanted}; known: {list(ALL_QUEUES)}")
        tasks = [asyncio.create_task(w.run()) for w in workers]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for w in workers:
            await w.shutdown()
        for t in done:
            if t is not stopper and t.exception():
                raise t.exception()
