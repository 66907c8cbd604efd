"""The operator's resident memory: glibc's malloc gives each thread that allocates its own arena (up to eight
per core) and rarely returns their free pages. The operator's handlers run in a pool of threads that each parse
and build object bodies, so a burst of a thousand objects leaves memory spread over many half-empty arenas.
Two arenas hold the same work in less memory at no measurable cost (Python's small objects do not use them)."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("kubedistill.operator")

M_ARENA_MAX = -8  # glibc's <malloc.h>


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for the rest of the process (as MALLOC_ARENA_MAX does at start-up); True when
    it took effect. Elsewhere (musl, macOS) nothing changes and False is returned."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here: malloc arenas left as they are")
        return False
