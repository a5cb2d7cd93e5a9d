"""MRD/ISMRMRD streaming server, client and gadget chains, in four layers.

- :mod:`gadgets.wire`: what travels and what is stored: the MRD stream framing
  (:mod:`~gadgets.wire.framing`), the client ``mr0-client`` (:mod:`~gadgets.wire.client`), access
  control (:mod:`~gadgets.wire.access`), MRD files (:mod:`~gadgets.wire.mrdfile`, the one writer
  and reader) and DICOM C-STORE to a PACS (:mod:`~gadgets.wire.pacs`). It imports no gadget and no
  torch, so the client starts in a fraction of a second.
- :mod:`gadgets.framework`: what a gadget is (:mod:`~gadgets.framework.core`: the base class, its
  properties and the registry), chains built from ``gadgets/config/chains/*.xml`` (package data)
  and the one session opener (:mod:`~gadgets.framework.chain`), heavy steps offloaded to the
  scheduler (:mod:`~gadgets.framework.offload`) and the server's store of reference scans and
  background results (:mod:`~gadgets.framework.session_store`). It imports no gadget.
- :mod:`gadgets.library`: the gadgets themselves (reconstruction, the digital-twin preview,
  retro-simulation, ASL, reference scans and retrieval) and the background-session job; importing
  the package registers every gadget.
- :mod:`gadgets.serve`: the hosts that run chains: the MRD server ``mr0-server``
  (:mod:`~gadgets.serve.server`) with its status page (:mod:`~gadgets.serve.status`) and DICOM
  output (:mod:`~gadgets.serve.dicom_output`), and the Gadgetron external gadgets
  (:mod:`~gadgets.serve.gadgetron_external`).

Each layer imports only the layers above it in this list (``tests/gadgets/test_gadgets_layers.py``).
"""
