"""Wake-ups between the parts of the server, and (later) the task event stream."""
