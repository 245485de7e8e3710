"""The asyncio layer: AsyncRequestChannel, AsyncSharedDict, message streams, worker threads.

The layers and what each module holds: docs/explanation/architecture.rst.
"""
