"""Everything dataset-specific, one module per dataset (flights, taxi) and the helpers their parsers share."""
