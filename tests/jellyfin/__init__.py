"""Jellyfin API emulator for tests: ``tests.jellyfin.emulator``."""
