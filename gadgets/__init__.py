"""MRD/ISMRMRD streaming server and gadget chains (not yet built; see the README status table)."""
