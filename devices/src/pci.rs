//! PCI (being written)
