"""Deploy checks: the deploy/*.sh scripts run these against a real server."""
