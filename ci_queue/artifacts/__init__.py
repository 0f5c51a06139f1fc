"""Artifacts, reports and caches: GitLab's rules for what jobs pass on to each other.

Pure modules, no I/O beyond what each says: ``reports`` (what jobs upload: dotenv, JUnit),
``dependencies`` (whose artifacts a job fetches), ``caches`` (cache keys and policies).
"""
