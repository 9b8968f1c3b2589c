"""OMOP CDM tables between PostgreSQL and Parquet: the CDM v5.4 schema, loading (step 0), exporting
(step 1), restoring synthetic sequences as OMOP tables (step 5), and concept names."""
