"""Pictures of the catalog for people who would rather look than read (``mgr storage --plot``)."""
