"""The MongoDB store: see :mod:`fhir_server.storage.mongodb.store` and docs/mongodb.md."""
