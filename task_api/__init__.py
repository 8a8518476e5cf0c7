"""The central task API: a durable queue with leases, producer and consumer routes, on SQLite or Postgres."""
