"""EventReach: who gets invited to a company's virtual events, as a Dagster asset graph."""
