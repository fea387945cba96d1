"""Exporters: turn run directories into files other tools read (COCO JSON, PNG masks)."""

from autolabel.exporters.coco import ExportStats, export_coco
from autolabel.exporters.masks import export_masks

__all__ = ["ExportStats", "export_coco", "export_masks"]
