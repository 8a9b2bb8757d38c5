"""Shared pytest configuration for pyserve's tests.

pyserve's own pytest plugin (fixtures for live servers and leak checks) is not
imported here: installing pyserve registers it through the ``pytest11`` entry
point, exactly as it reaches users' test suites.
"""
