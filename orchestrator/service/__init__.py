"""The long-lived service: queued jobs in, jobs run on shared warm pools, records and metrics out.

`coordinator` queues and schedules jobs onto pools, `records` keeps each job's record in the state
store, `api` serves it over HTTP with token auth, `metrics` exports it to Prometheus.
"""
