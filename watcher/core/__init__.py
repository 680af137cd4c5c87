"""The decision core: the daemon's rules as pure functions and small state machines.

Nothing here reads the clock, touches the filesystem or the network, or logs: time is an
argument, results come in as values, decisions go out as values. The service loop
(:mod:`watcher.service`) feeds it and executes what it decides.
"""
