"""OTP-style supervision (duckagents.supervision), under Trio's MockClock."""
