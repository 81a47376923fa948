"""The serve side: the processor (processor.py) and its services (fetcher,
completer, heartbeat, listener, pruner), the dispatch they share, the worker
loop, and the rules for outcomes. Only `serve` imports processor.py, and with it
the web side; `prune` shares pruner.py."""
