"""Dagster definitions built from the contracts; autoloaded by ``bronze_assets.definitions``."""
