"""``jellyfin-watcher config --print``: the effective configuration, secrets masked."""

from __future__ import annotations

import json

from watcher.commands.common import EXIT_OK
from watcher.config import DEFAULT_LIBRARY_INTERVAL, Config, masked_url


def print_config(config: Config) -> int:
    """The effective configuration as TOML-like lines, the key masked, each value followed
    by where it was picked up (a flag, an environment variable, the file) unless default."""

    def origin(name: str) -> str:
        return f"  # from {config.sources[name]}" if name in config.sources else ""

    print(f"# effective configuration ({config.config_file or 'no configuration file'})")
    print(f"state_dir = {json.dumps(str(config.state_dir))}{origin('state_dir')}")
    print(f"log_level = {json.dumps(config.log_level)}{origin('log_level')}")
    print(f"log_format = {json.dumps(config.log_format)}{origin('log_format')}")
    print(f"dry_run = {str(config.dry_run).lower()}{origin('dry_run')}")
    print("\n[jellyfin]")
    print(f"url = {json.dumps(config.url) + origin('url') if config.url else '# not set'}")
    print(f"api_key = {json.dumps('********') + origin('api_key') if config.api_key else '# not set'}")
    print(f"timeout = {config.request_timeout:g}")
    # Keys added with the Jellyfin integration, where they differ from their defaults.
    if config.server != "jellyfin":
        print(f"server = {json.dumps(config.server)}")
    if config.username is not None:
        print(f"username = {json.dumps(config.username)}")
        print(f"password = {json.dumps('********')}")
    if isinstance(config.verify, str):
        print(f"ca_bundle = {json.dumps(config.verify)}")
    elif config.verify is False:
        print("verify = false")
    if config.library_interval != DEFAULT_LIBRARY_INTERVAL:
        print(f"library_interval = {config.library_interval:g}")
    print("\n[refresh]")
    print(f"scope = {json.dumps(config.scope)}")
    print(f"gate = {json.dumps(config.gate)}")
    for mapping in config.path_map:
        print("\n[[path_map]]")
        print(f"jellyfin = {json.dumps(mapping.jellyfin)}")
        print(f"local = {json.dumps(mapping.local)}")
    print("\n[watch]")
    for name in ("quiet_period", "max_wait", "probe_timeout", "backoff_max", "settle", "health_interval"):
        print(f"{name} = {getattr(config, name):g}{origin(name)}")
    print(f"ignore = {json.dumps(list(config.ignore))}")
    if config.roots:
        print(f"\n# roots{origin('roots')}")
    for root in config.roots:
        print("\n[[roots]]")
        print(f"path = {json.dumps(str(root.path))}")
        if root.mount is not None:
            print(f"mount = {json.dumps(str(root.mount))}")
    if not config.roots:
        print("\n# roots: every location of every Jellyfin library")
    print("\n[notify]")
    urls = json.dumps([masked_url(url.reveal()) for url in config.notify_urls])
    print(f"urls = {urls}{origin('notify_urls')}" if config.notify_urls else "# urls: not set (no notifications)")
    print(f"after = {config.notify_after:g}\nrate_limit = {config.notify_rate_limit:g}\ntimeout = {config.notify_timeout:g}")
    return EXIT_OK
