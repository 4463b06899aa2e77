"""Organisation units (组织机构): the tree the system administrator keeps of departments."""
