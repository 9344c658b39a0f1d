"""What reads completions and finished runs: the aha metrics, transcripts, held-out evaluation math and the run
report. Nothing here loads a model or touches a device."""
