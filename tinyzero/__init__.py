"""tinyzero: pure-RL (GRPO/PPO) training of language models on verifiable rewards, from a laptop CPU to a
multi-GPU box. See README.md; the engine is described in docs/engine.md."""

__version__ = "0.1.0"
