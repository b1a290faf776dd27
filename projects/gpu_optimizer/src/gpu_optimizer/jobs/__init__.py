"""Profiling jobs and plans: validated in the API process, run in worker processes.

``specs`` (which model specs are allowed), ``runner`` (the supervisor in the
API process), ``worker`` (what runs in the child), ``entry`` and ``preload``
(process entry points and the forkserver's warm start).
"""
