"""The hosts that run chains: the MRD server, its status page, the Gadgetron external gadgets.

``mr0-server`` (:mod:`gadgets.serve.server`) with its status page and DICOM output, and the
Gadgetron external gadgets (``python -m gadgets.serve.gadgetron_external``). Its modules are
imported by name (this package imports none of them).
"""
