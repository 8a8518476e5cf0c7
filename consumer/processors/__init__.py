"""Built-in processors: ``async def process(ctx: TaskContext) -> dict`` per workflow.

Each is registered under the ``taskfleet.processors`` entry-point group with the workflow's name,
so an installed package adds its own the same way.
"""
