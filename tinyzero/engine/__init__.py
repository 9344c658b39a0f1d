"""What runs on devices: the roles (rollout workers, learner, reference), where they are placed, the forward
passes, FSDP2 sharding, the typed messages between roles, device and model loading (docs/engine.md)."""
