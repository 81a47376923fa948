"""`python -m taskworker`: the same as the `taskworker` command."""
from taskworker.cooperative import main

main()
