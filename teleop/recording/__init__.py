"""Recording a session: frame sampling, the writer process and its slot ring, the raw MCAP log and its repair."""
