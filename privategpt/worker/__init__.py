"""Durable background jobs: a queue in the database (`queue`), the worker that runs it (`runner`), and the
registry of job kinds (`handlers`)."""
