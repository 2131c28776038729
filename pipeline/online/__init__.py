"""Windowed features online, without Beam: the window store the server, replay and the streaming job share."""
