"""The schema revision this Corral needs: the newest in alembic/versions (a test
checks the two agree). Start-up compares the database with it without loading
alembic."""

SCHEMA_REVISION = "0014"
