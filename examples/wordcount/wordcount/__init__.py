"""wordcount: an example taskworker handler that writes to a table of its own."""
