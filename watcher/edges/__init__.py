"""The edges: everything that touches the world.

Watching (watchdog, the mount table), probing roots, polling, listing folders, HTTP to
Jellyfin, state and status files, systemd. Anything that can block runs with a deadline,
and the daemon runs it on a worker so that its loop never waits.
"""
