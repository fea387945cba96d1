"""The FiftyOne review loop: push runs into a grouped dataset, review masks in the App, pull corrections.

Nothing here imports fiftyone at module load; `database.connect()` does, when a command needs it.
"""
