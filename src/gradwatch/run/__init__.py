"""One run's lifecycle: its directory and files, the record (the only writer of
summary.json), resume, interrupts, faults, provenance. ``Run`` (:mod:`.lifecycle`) holds
them together for ``gradwatch.train``.

Kept free of imports so that ``gradwatch.run.files`` (the run-file names) stays cheap for
the callbacks and the report.
"""
