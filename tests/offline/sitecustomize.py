# Loaded by every Python process the test suite starts (PYTHONPATH): the course must run with no network.
import os

if os.environ.get("MMLIB_BLOCK_NETWORK") == "1":
    try:
        from mmlib.offline import block_network
    except ImportError:  # mmlib not importable in this process: nothing to guard
        pass
    else:
        block_network()
