"""Running the pipeline on a cluster: resource requests of every rule and the cost forecast."""
