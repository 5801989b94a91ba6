"""The ACE IoT API: its wire format, a client for it, and a simulator that speaks it."""
