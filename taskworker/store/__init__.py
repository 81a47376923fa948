"""The database side: every statement (queries.sql) behind one typed function
each, the connection that survives outages, and the migration runner.

Nothing outside this package sees SQL text or row tuples.
"""
