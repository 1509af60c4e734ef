#!/bin/sh
# Runs once, when the data directory is first initialised (docker-entrypoint-initdb.d).
# The image creates POSTGRES_DB (the fourm registry) owned by POSTGRES_USER; this adds
# Prefect's own role and database. The password is passed as a psql variable, never echoed.
set -eu
psql -v ON_ERROR_STOP=1 -v prefect_password="$PREFECT_DB_PASSWORD" \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
SQL
