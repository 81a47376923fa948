"""`python -m taskworker`: the same as the `taskworker` command."""
from taskworker.entry import main

main()
