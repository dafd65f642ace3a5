"""The engine catalog: versions → images, topologies, plans and typed parameter definitions."""

from middleware.catalog.catalog import Catalog, load_default_catalog, merge_catalogs
from middleware.catalog.parameters import format_parameter, validate_parameters

__all__ = ["Catalog", "format_parameter", "load_default_catalog", "merge_catalogs", "validate_parameters"]
