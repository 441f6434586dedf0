"""Leaves through os._exit(0) without writing anything at all."""

import os

os._exit(0)
