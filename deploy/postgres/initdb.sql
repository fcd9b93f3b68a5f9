-- Run once, when the PostgreSQL volume is initialised: POSTGRES_DB makes the MLflow database, this makes
-- Optuna's. They stay apart because both keep an `alembic_version` table of their own schema.
CREATE DATABASE optuna;
