"""Per-dataset schemas: the one place where raw columns, types, ranges, labels and feature sets live."""

from schemas.base import Column, DatasetSchema, transformed_name


def get_schema(dataset: str) -> DatasetSchema:
    """The schema of ``dataset`` ("flights" or "taxi")."""
    import importlib

    try:
        module = importlib.import_module(f"schemas.{dataset}")
    except ModuleNotFoundError:
        raise ValueError(f"unknown dataset {dataset!r}") from None
    return module.SCHEMA


__all__ = ["Column", "DatasetSchema", "get_schema", "transformed_name"]
