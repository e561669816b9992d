"""μOmni: a tiny Thinker–Talker omni model trained from scratch."""
