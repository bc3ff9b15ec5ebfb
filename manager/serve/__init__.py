"""``mgr serve``: one backbone on its device, every task's delta routed per request.

``app`` is the HTTP side (FastAPI), ``scheduler`` the per-task queues and the model's worker
thread, ``engine`` the model (fused switches, resident deltas, mixed-task batches), ``costs`` the
measured cost model that picks between them, ``metrics`` the Prometheus exposition and
``client`` a small standard-library client (``mgr predict --server``).
"""
