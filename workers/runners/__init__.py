"""Step runners: how a build host runs a job's steps (a shell, or a Docker container)."""
