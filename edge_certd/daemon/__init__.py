"""`edge-certd run`: the loop, the watcher and sd_notify. May import: sync and below."""
