"""The metrics table node (one row per region) and its CSV export."""

import csv
import io
import math
from pathlib import Path

import vtk

from dicyc.errors import DicycError

#: Table columns: (title, row key, vtk array class, unit).
TABLE_COLUMNS = (
    ("Segment", "segment", "vtkStringArray", ""),
    ("MSE", "mse", "vtkDoubleArray", "units^2"),
    ("PSNR", "psnr", "vtkDoubleArray", "dB"),
    ("SSIM", "ssim", "vtkDoubleArray", ""),
    ("MAE", "mae", "vtkDoubleArray", "units"),
    ("Voxels", "n_voxels", "vtkIntArray", ""),
)


def metrics_table_node(scene, rows, name="DiCyc metrics", table_node=None):
    """A table node with columns Segment, MSE, PSNR, SSIM, MAE, Voxels (one row per region).

    Reuses ``table_node`` (its columns are replaced) or adds a new one. PSNR is ``inf`` for
    identical regions and NaN marks a region that could not be evaluated.
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    was = table_node.StartModify()
    table_node.RemoveAllColumns()
    table = table_node.GetTable()
    for title, key, cls, unit in TABLE_COLUMNS:
        column = getattr(vtk, cls)()
        column.SetName(title)
        for row in rows:
            value = row.get(key)
            if cls == "vtkStringArray":
                column.InsertNextValue(str(value if value is not None else ""))
            elif cls == "vtkIntArray":
                column.InsertNextValue(int(value or 0))
            else:
                column.InsertNextValue(math.nan if value is None else float(value))
        table_node.AddColumn(column)
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
    table_node.SetColumnDescription("MSE", "mean squared error, volume units squared (HU^2 for CT)")
    table_node.SetColumnDescription("PSNR", "peak signal-to-noise ratio, data range = reference max - min in the region")
    table_node.SetColumnDescription("SSIM", "structural similarity, slice-wise (axial), averaged over the region")
    table_node.SetColumnDescription("MAE", "mean absolute error, volume units (HU for CT)")
    table_node.SetColumnDescription("Voxels", "voxels evaluated")
    table_node.SetUseColumnNameAsColumnHeader(True)
    table.Modified()
    table_node.EndModify(was)
    return table_node


def _format_cell(value):
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def table_rows(table_node):
    """(header, rows) of a table node's vtkTable, values as Python objects."""
    table = table_node.GetTable()
    header = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = []
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            value = column.GetValue(r)
            if isinstance(column, vtk.vtkStringArray):
                row.append(str(value))
            elif isinstance(column, (vtk.vtkIntArray, vtk.vtkLongArray, vtk.vtkLongLongArray)):
                row.append(int(value))
            else:
                row.append(float(value))
        rows.append(row)
    return header, rows


def export_table_csv(table_node, path):
    """Write the table as CSV (header row, full float precision, ``inf``/``nan`` spelled out),
    atomically; returns the path."""
    from dicyc.atomic import write_text

    header, rows = table_rows(table_node)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_format_cell(v) for v in row])
    path = Path(path)
    try:
        write_text(path, buffer.getvalue())
    except OSError as exc:
        raise DicycError(f"could not write {path}: {exc.strerror or exc}.") from None
    return path
