"""Other engines: the verl export (data, config, launch script) and the reward module verl loads."""
