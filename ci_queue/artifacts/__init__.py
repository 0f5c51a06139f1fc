"""Artifacts, reports and caches: what jobs on different hosts pass to each other.

``selection`` (which files, never outside the workspace), ``archive`` (the tar that carries them
and its safe unpacking), ``reports`` (dotenv and JUnit, read on the control plane),
``dependencies`` (whose artifacts a job fetches), ``caches`` (cache keys and policies),
``storage`` (the farm's object store from the settings), ``janitor`` (what expired goes).
"""
