"""RootWatcher (watcher/edges/watch.py) where watchdog 7.1 alone goes wrong.

* After a kernel queue overflow watchdog rebuilds a recursive watch by removing every watch
  and adding them again; each removal queues an ``IN_IGNORED`` event, so a tree of more
  folders than ``fs.inotify.max_queued_events`` overflows the queue again, and again (on
  20,000 folders: 406 overflows, 229 s of CPU). The watcher reconciles instead.
* A folder tree copied into a root makes watchdog register some folders twice and warn with
  the repr of the whole watch group (a megabyte per line on a large library); the watcher
  filters that warning. Under pytest (``filterwarnings = error``) the warning would even
  kill watchdog's reader thread, so a live watcher after the copy is the evidence.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from queue import Empty, SimpleQueue

import pytest
from support import TmpfsMount, wait_until

from watcher.core.messages import EventsLost, FileEvent
from watcher.edges.verify import coverage
from watcher.edges.watch import RootWatcher

WAIT = 15.0


def drain(events: SimpleQueue[object]) -> list[object]:
    items = []
    while True:
        try:
            items.append(events.get_nowait())
        except Empty:
            return items


def read_int(path: str) -> int:
    return int(Path(path).read_text().strip())


@pytest.mark.root_only()
def test_overflow_recovery_does_not_overflow_again_and_watches_what_was_missed(tmp_path: Path) -> None:
    queued = read_int("/proc/sys/fs/inotify/max_queued_events")
    folders = queued + 2_000  # more folders than the queue holds events
    if queued > 100_000:
        pytest.skip(f"fs.inotify.max_queued_events is {queued}: the tree needed to show the loop is too big")
    if read_int("/proc/sys/fs/inotify/max_user_watches") < 2 * folders:
        pytest.skip("fs.inotify.max_user_watches is too low for a tree of this size")
    with TmpfsMount(tmp_path / "media", size="256m") as mount:
        root = mount.mount_point
        leaves = []
        for top in range(100):
            for sub in range(folders // 100):
                leaf = root / f"d{top:03d}" / f"e{sub:03d}"
                leaf.mkdir(parents=True)
                leaves.append(leaf)
        events: SimpleQueue[object] = SimpleQueue()
        with RootWatcher(events.put) as watcher:
            assert watcher.watch(root) is None
            # A storm from another process (as fast as the kernel allows; the reader cannot
            # keep up) that also makes new folders and renames some while events are lost.
            storm = (
                "import os, sys\n"
                "leaves = sys.argv[1:]\n"
                "for i in range(100_000):\n"
                "    os.close(os.open(os.path.join(leaves[i % 5000], f's{i}'), os.O_CREAT | os.O_WRONLY))\n"
                "    if i % 2000 == 0:\n"
                "        os.makedirs(os.path.join(leaves[-1 - i // 2000], f'new{i}', 'sub'))\n"
                "    if i % 10000 == 0:\n"
                "        os.rename(leaves[-500 - i // 10000], leaves[-500 - i // 10000] + '-renamed')\n"
            )
            subprocess.run([sys.executable, "-c", storm, *map(str, leaves)], check=True, timeout=120)
            # The recovery after the storm's last overflow has run once the watcher reports a
            # write made after the storm: the kernel queues events in order, and the overflow
            # is handled on the thread that reads them. While the queue is still full the
            # write's own event is dropped, so each look writes the marker again.
            marker = root / "written after the storm"
            during: list[object] = []

            def caught_up() -> bool:
                marker.write_bytes(b"x")
                during.extend(drain(events))
                return any(isinstance(item, FileEvent) and item.path == str(marker) for item in during)

            wait_until(caught_up, WAIT, interval=0.2,
                       message="the watcher never caught up with the storm: its overflow recovery loops?")
            lost = sum(isinstance(item, EventsLost) for item in during)
            if lost == 0:
                pytest.skip("the storm did not overflow the kernel queue on this machine: nothing to recover from")
            # A deliberate negative window, opened once the watcher has caught up: watchdog's
            # own recovery overflows the queue again about once a second here, so three
            # seconds without an overflow show the recovery does not loop.
            time.sleep(3.0)
            again = sum(isinstance(item, EventsLost) for item in drain(events))
            assert again == 0, f"{again} more overflows after the storm ended ({lost} during it): the recovery loops"

            [result] = coverage([root], 60)
            assert result.problem() is None, result.problem()
            made = next(root.glob("d*/e*/new*/sub"))
            renamed = next(root.glob("d*/e*-renamed"))
            (made / "after.mkv").write_bytes(b"x")
            (renamed / "after.mkv").write_bytes(b"x")
            wanted = {str(made / "after.mkv"), str(renamed / "after.mkv")}
            seen: set[str] = set()

            def both_seen() -> bool:
                seen.update(item.path for item in drain(events) if isinstance(item, FileEvent))
                return wanted <= seen

            wait_until(both_seen, WAIT, message=f"events under folders made or renamed during the overflow: {seen & wanted}")


def test_a_folder_tree_copied_in_does_not_warn(tmp_path: Path) -> None:
    source = tmp_path / "download" / "Show"
    for season in range(20):
        folder = source / f"Season {season:02d}" / "extras" / "featurettes"
        folder.mkdir(parents=True)
        for episode in range(10):
            (source / f"Season {season:02d}" / f"Show S{season:02d}E{episode:02d}.mkv").write_bytes(b"x")
    root = tmp_path / "shows"
    root.mkdir()
    events: SimpleQueue[object] = SimpleQueue()
    with RootWatcher(events.put) as watcher:
        assert watcher.watch(root) is None
        for copy in range(5):  # a copy creates each folder, then its sub-folders: the race that double-registers
            subprocess.run(["cp", "-r", str(source), str(root / f"Show {copy}")], check=True)
        probe = root / "Show 4" / "Season 19" / "extras" / "featurettes" / "probe.mkv"
        probe.write_bytes(b"x")
        seen: set[str] = set()

        def probe_seen() -> bool:
            seen.update(item.path for item in drain(events) if isinstance(item, FileEvent))
            return str(probe) in seen

        wait_until(probe_seen, WAIT, message="no event after the copies: watchdog's reader thread died?")
