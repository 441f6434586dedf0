"""eventpost: lays out a Discord post of events, one labelled block per event.

Beta's requirement, shipped with it as a wheel (``wheels/``, built from this file by
``vendor/build_wheel.py``) so that the demo installs it with pip and no network.
"""

__version__ = "1.0"

LABELS = (("📅", "Date"), ("🕕", "Time"), ("📍", "Location"), ("🏷️", "Type"), ("🔗", "URL"))


def heading(title, tagline=""):
    """The post's first lines: a markdown heading and an optional italic tagline."""
    lines = [f"# {title}", ""]
    if tagline:
        lines += [f"_{tagline}_", ""]
    return lines


def event_block(title, date, time, location, kind, url):
    """One event: its bold title on a line of its own, then one labelled line per field."""
    values = (date, time, location, kind, url)
    return [f"**{title}**"] + [f"{icon} {label}: {value}"
                               for (icon, label), value in zip(LABELS, values, strict=True)] + [""]
