"""SQL over the store: read-only queries (:mod:`.query`), indicator macros (:mod:`.macros`), their
Python API (:mod:`.analytics`) and exports of series or queries to files (:mod:`.export`)."""
