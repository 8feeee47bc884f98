// The server schema as of migration 12, in PostgreSQL's dialect: where a PostgreSQL metadata database
// starts (src/sql Baseline). Written by hand from the SQLite schema; the metadata conformance suite
// checks both behave alike. Every migration after 12 gives a `postgres` form next to its `sqlite` one.
export const POSTGRES_BASELINE = `-- to be written`;
