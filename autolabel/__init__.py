"""autolabel: label image groups with pixel masks by multi-image reasoning."""

__version__ = "0.1.0"
