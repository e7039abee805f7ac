"""Every wire model and view of the service, below both ``app.api`` and ``app.services``.

One request model per operation, ``extra="forbid"`` for the native API (a
misspelt field is a 422, never silently ignored); views are built from records
by their ``of`` class methods, the one way a record becomes what a client sees.
"""
