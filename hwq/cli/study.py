"""Study commands: sweep, report, model, reproduce (in progress)."""
