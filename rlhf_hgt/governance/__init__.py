"""Run records: manifest, provenance summary, model card, oversight report."""
