"""MRD/ISMRMRD streaming server, client and gadget chains.

``protocol`` frames the messages, ``core`` and ``chain`` define gadgets and build chains from
``gadgets/config/chains/*.xml`` (package data), ``recon`` holds the standard gadgets (which
call ``mr0core.recon``),
``twin`` the digital-twin preview, ``server`` and ``client`` are ``mr0-server`` and
``mr0-client``. ``client`` imports neither torch nor mr0core (``wire_tools`` holds its
torch-free helpers), so that it starts in a fraction of a second.
"""
