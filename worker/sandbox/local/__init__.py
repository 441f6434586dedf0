"""The local backend: each candidate in a bubblewrap sandbox on the worker's own machine.

Candidates are untrusted code. With bubblewrap available (probed once per process) a
candidate runs in fresh user/PID/IPC/UTS/cgroup/network namespaces, sees a read-only
minimum of the system plus a private writable ``/sandbox`` (all of it listed in
``worker.sandbox.visible``), and nothing of the repository, the worker's home, the
artifacts directory, other candidates or the worker's environment. Its network is
either nothing but its own loopback, or outbound-only through slirp4netns (see
``worker.sandbox.netns`` and ``worker.sandbox.egress``).

Limits: rlimits (address space, CPU time, file size, open files, no core dumps,
processes) are set on the sandbox's first process before it starts the command; a
per-sandbox pids and memory cgroup is added where the cgroup tree is writable. The
deadline kills the sandbox's PID namespace, which takes every descendant with it,
daemonised or not.

Without bubblewrap (or with ``FORGE_SANDBOX=plain``) candidates still run with the
rlimits, a scrubbed environment, the deadline and a process-group (and cgroup) kill,
but with NO filesystem or network isolation: ``isolation`` then starts with "NONE:"
and a warning is logged. ``FORGE_REQUIRE_ISOLATION=1`` turns that into an error.

Modules, one job each:

* ``backend``: ``LocalBackend`` (create a sandbox, reserve a core), ``prepare_process``
  and ``warm_process``;
* ``sandbox``: what every local sandbox has (its directory, safe upload/download);
  ``untar``: a project unpacked into it from the host, no link followed;
  ``bwrap_sandbox`` and ``plain``: running the command, with and without bubblewrap;
* ``warm``: the next candidate's sandbox made while the current one runs; ``zygote``:
  its interpreter, waiting in the sandbox for the command line;
* ``bwrap``: is bubblewrap here and working (the probe);
* ``launch``: which host uid bwrap runs as, with which rlimits; ``prefix_view``: the
  process's mount namespace showing a hidden interpreter prefix;
* ``pyenv``: the candidate's python environment; ``etc``: the cached ``/etc`` skeleton;
* ``cgroups``: per-sandbox cgroups; ``process``: rlimits, waiting, reaping, killing;
* ``parent_dir``: where sandboxes live; ``owner`` and ``leftovers``: sweeping what a
  killed worker left; ``cleanup``: what this process undoes when it ends.
"""

from __future__ import annotations

from worker.sandbox.local.backend import LocalBackend, prepare_process, warm_process

__all__ = ["LocalBackend", "prepare_process", "warm_process"]
