"""The KD-NAS search: reward, controller and strategies (the episode loop and journal build on these)."""
