"""MRD/ISMRMRD streaming server, client and gadget chains.

``protocol`` frames the messages, ``core`` and ``chain`` define gadgets and build chains from
``gadgets/config/chains/*.xml`` (package data), ``recon`` holds the standard gadgets (which
call ``mr0core.recon``),
``twin`` the digital-twin preview, ``server`` and ``client`` are ``mr0-server`` and
``mr0-client``. ``client`` imports no torch and only mr0core's light modules
(``mr0core.clitools``, ``mr0core.io.rawfile``), so that it starts in a fraction of a second.
"""
