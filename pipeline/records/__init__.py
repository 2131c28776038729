"""The record model: records move between stages as Arrow record batches of one schema per dataset."""
