"""Ready-made protocol handlers for pyserve servers.

Everything in this package is built only on pyserve's public API -- the same
names any user can import -- so each handler doubles as a worked example of
writing one.  The handlers themselves (line, length-prefixed, RESP and PROXY
framing, with sans-IO parsers underneath) land in a later issue; until then the
package is intentionally empty.
"""

__all__: list[str] = []
