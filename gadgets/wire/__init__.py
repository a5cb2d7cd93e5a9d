"""What travels and what is stored: MRD stream framing, the client, access control, MRD files.

Imports no gadget, no torch and only mr0core's light modules, so that ``mr0-client`` starts in a
fraction of a second. Its modules are imported by name (this package imports none of them).
"""
