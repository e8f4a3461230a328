"""The study: the paper's geometric model (``analysis``), figures (``plots``) and the report."""
