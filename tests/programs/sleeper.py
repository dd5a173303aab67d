"""Starts a child that would outlive it, notes both pids, then hangs: what a timeout or a Ctrl-C must clean up."""

import os
import subprocess
import sys
import time

pid_dir = sys.argv[1]
child = subprocess.Popen(["sleep", "600"])
with open(os.path.join(pid_dir, f"{os.getpid()}.pids"), "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}\n")
time.sleep(600)
