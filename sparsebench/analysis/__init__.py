"""Statistics, cell identity, references and verdicts shared by the report and `sparsebench results`."""
