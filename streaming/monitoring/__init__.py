"""Monitoring: per-window statistics, the job's ``MonitorWindows`` stage, the report's plots
and markdown, and the ``fraudstream monitor`` command."""
