"""What a run needs and costs, before and while it runs: the preflight (memory, disk, layout) and the cost meter
and estimate."""
