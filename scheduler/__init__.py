"""GPU-aware job scheduler: NVML monitoring, pure decisions, a durable store, worker processes.

:class:`scheduler.service.Scheduler` joins :mod:`scheduler.gpu` (NVML), :mod:`scheduler.state`
(placement, priorities, retries), :mod:`scheduler.store` (SQLite, exactly-once completion) and
:mod:`scheduler.workers` (one process per GPU slot and CPU workers) or
:mod:`scheduler.ray_backend` (a Ray cluster). ``mr0-scheduler`` (:mod:`scheduler.cli`) runs and
inspects it; ``mr0-server`` runs one in-process. See docs/scheduler.md.
"""
