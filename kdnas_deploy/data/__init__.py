"""The data layer: task registry and metrics (`tasks`), loading splits from GLUE folders, the hub or files
(`sources`), tokenising with a cache (`encode`), padding batches with numpy (`batching`), and a task made ready for
a teacher with its proxy split (`prepare`). Imports no torch."""
