"""Agent Beta, "The Perfectionist": reads everything, trusts nothing, takes its time.

A small project rather than one script (candidates/README.md): the feed is a data file
next to the code (``data/events.json``), the checks and the audit are modules of their
own, and the post is laid out by ``eventpost``, a requirement installed from the wheel
the project ships (``requirements.txt``), so the demo installs it without a network.
Usage: python3 -m beta "<objective>" <output>
"""
