"""The gadget framework: the gadget base and registry, chains, the session opener, offloading.

:func:`gadgets.framework.chain.open_chain` opens every session's chain (the server's, the
Gadgetron external gadgets', background sessions', retro-simulation's reconstruction). Imports no
gadget: the gadgets register themselves when :mod:`gadgets.library` is imported. Its modules are
imported by name (this package imports none of them).
"""
