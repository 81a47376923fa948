"""What serve shows over HTTP: Prometheus metrics and a health check now, the
dashboard later. It reads the processor only through the `Observed` protocol
(health.py): each service's stats() and each connection's state, never the
processor's fields, and imports nothing of the processor.
"""
