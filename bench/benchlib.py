"""What the benchmarks share: clearing caches and warming memory between runs."""
import subprocess


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm_memory(size_mib):
    """Touches as much memory as the run will fill with page cache, then frees it.

    On a virtual machine whose balloon hands freed pages back to the host, the
    first touch of such a page costs more than the copy into it, and how many
    pages are in that state after dropping caches varies from run to run. Every
    side of a comparison gets recently used pages, so the figures compare the
    file systems rather than the host's memory.
    """
    b = bytearray(size_mib << 20)
    b[::4096] = b"\1" * len(range(0, len(b), 4096))
    del b


def fresh_caches(size_mib):
    """Empty page cache, with memory for `size_mib` of it ready."""
    drop_caches()
    warm_memory(size_mib)
