"""The consumer fleet: leases tasks from the task API, runs their processors, reports back.

``consumer.context.TaskContext`` is what a processor sees; ``consumer.runner.Consumer`` is the
asyncio runtime; ``python -m consumer`` / ``taskfleet consumer`` start it.
"""
